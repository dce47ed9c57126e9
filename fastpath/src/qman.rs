//! The queue manager: which flows may transmit next.
//!
//! Unpaced flows are served round-robin from a fixed ring of flow indices (a flow is on
//! it at most once, marked by `F_IN_TXQ`), each turn sending up to a burst of segments.
//! Rate-limited (paced) flows join through the same interface when congestion control
//! lands; the ring never allocates after creation.

/// A FIFO of flow indices with room for every flow of the core.
#[derive(Debug)]
pub struct ReadyQueue {
    ring: Vec<u32>,
    head: usize,
    len: usize,
}

impl ReadyQueue {
    /// Room for `capacity` flows.
    pub fn new(capacity: u32) -> Self {
        ReadyQueue {
            ring: vec![0; capacity.max(1) as usize],
            head: 0,
            len: 0,
        }
    }
    /// Queued flows.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Append a flow (callers keep each flow on the queue at most once, so it never
    /// overflows; an overflow would be a bug and is refused).
    pub fn push(&mut self, flow: u32) -> bool {
        if self.len == self.ring.len() {
            debug_assert!(false, "ready queue overflow");
            return false;
        }
        let i = (self.head + self.len) % self.ring.len();
        self.ring[i] = flow;
        self.len += 1;
        true
    }
    /// Take the next flow.
    pub fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let f = self.ring[self.head];
        self.head = (self.head + 1) % self.ring.len();
        self.len -= 1;
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo() {
        let mut q = ReadyQueue::new(3);
        assert!(q.push(1) && q.push(2) && q.push(3));
        assert_eq!(q.pop(), Some(1));
        assert!(q.push(4));
        assert_eq!(
            (q.pop(), q.pop(), q.pop(), q.pop()),
            (Some(2), Some(3), Some(4), None)
        );
    }
}
