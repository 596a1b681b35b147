//! The receiver's window of recent event ids, which drops redelivered duplicates.

use std::collections::VecDeque;

use ahash::AHashSet as HashSet;

use super::EventId;

/// The last `capacity` distinct event ids seen, oldest forgotten first. A duplicate older than
/// the window is not recognised: size it above the number of events that can arrive between
/// an event's first delivery and its redelivery (the claim timeout times the rate).
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet<EventId>,
    order: VecDeque<EventId>,
    capacity: usize,
    duplicates: u64,
}

impl DedupWindow {
    /// A window of the last `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DedupWindow {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
            duplicates: 0,
        }
    }

    /// True the first time `id` is offered within the window, false for a repeat.
    pub fn first_time(&mut self, id: EventId) -> bool {
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(id);
        true
    }

    /// Takes `id` out of the window (its event did not get handled after all: it must run
    /// when it comes again). Its place in the window's order stays until it ages out: if the
    /// id is seen again meanwhile, it leaves the window that much earlier.
    pub fn forget(&mut self, id: &EventId) {
        self.seen.remove(id);
    }

    /// True if `id` is in the window (without offering it).
    pub fn contains(&self, id: &EventId) -> bool {
        self.seen.contains(id)
    }

    /// How many repeats it dropped (said false to).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// How many ids the window holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no id was offered yet.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sequence: u64) -> EventId {
        EventId {
            origin: 1,
            sequence,
        }
    }

    #[test]
    fn a_forgotten_id_is_new_again() {
        let mut window = DedupWindow::new(4);
        assert!(window.first_time(id(1)));
        window.forget(&id(1));
        assert!(!window.contains(&id(1)));
        assert!(window.first_time(id(1)), "offered again, it is new");
        assert!(window.contains(&id(1)));
    }

    #[test]
    fn repeats_within_the_window_are_dropped_and_old_ids_forgotten() {
        let mut window = DedupWindow::new(3);
        assert!(window.first_time(id(1)));
        assert!(!window.first_time(id(1)));
        assert!(
            window.first_time(EventId {
                origin: 2,
                sequence: 1
            }),
            "another origin"
        );
        assert!(window.first_time(id(2)));
        assert!(window.first_time(id(3)), "evicts id 1");
        assert_eq!(window.len(), 3);
        assert!(window.first_time(id(1)), "forgotten, so new again");
        assert!(!window.first_time(id(3)));
        assert_eq!(window.duplicates(), 2);
    }

    #[test]
    fn a_window_of_zero_keeps_one() {
        let mut window = DedupWindow::new(0);
        assert!(window.first_time(id(1)));
        assert!(!window.first_time(id(1)));
        assert!(window.first_time(id(2)));
        assert!(window.first_time(id(1)));
    }
}
