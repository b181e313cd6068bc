use clap::Parser;

fn main() {
    let cli = payrecon::cli::Cli::parse();
    // The demo tells its own story; the daemon inside it logs only warnings.
    match cli.command {
        payrecon::cli::Command::Demo { .. } => payrecon::telemetry::init_with_default("warn"),
        _ => payrecon::telemetry::init(),
    }
    let code = payrecon::app::main(cli);
    std::process::exit(code);
}
