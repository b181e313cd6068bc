//! Which messages of a window of publishes the broker confirmed.

/// The confirms a window of publishes is waiting for.
pub(super) struct Window {
    first: u64,
    outcomes: Vec<Option<bool>>,
    /// Every tag below `first + done` is settled.
    done: usize,
}

impl Window {
    pub(super) fn new(first: u64, len: usize) -> Window {
        Window {
            first,
            outcomes: vec![None; len],
            done: 0,
        }
    }

    /// Applies the broker's ack or nack of `tag` (and, with `multiple`, of
    /// every tag up to it not settled yet). Tags outside the window are
    /// ignored: the broker confirms each tag once.
    pub(super) fn settle(&mut self, tag: u64, multiple: bool, acked: bool) {
        let Some(index) = tag.checked_sub(self.first).map(|i| i as usize) else {
            return;
        };
        if index >= self.outcomes.len() {
            return;
        }
        let from = if multiple {
            self.done.min(index)
        } else {
            index
        };
        for slot in &mut self.outcomes[from..=index] {
            slot.get_or_insert(acked);
        }
        while self.outcomes.get(self.done).is_some_and(Option::is_some) {
            self.done += 1;
        }
    }

    pub(super) fn settled(&self) -> bool {
        self.done == self.outcomes.len()
    }

    pub(super) fn into_outcomes(self) -> Vec<bool> {
        self.outcomes.into_iter().map(|o| o == Some(true)).collect()
    }
}
