//! The gateway simulator: both protocols, served faithfully.
