//! Hand-rolled decoding of fuzz input: a cursor over the bytes that hands
//! out small choices. Running out of bytes ends the input; every byte
//! string decodes to something, so the fuzzer never wastes an execution on
//! a parse error.

/// A cursor over fuzz input.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Input<'a> {
        Input { bytes }
    }

    /// The next byte, or `None` at the end of the input.
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// The next byte as a choice among `n` (`n > 0`); 0 past the end, so an
    /// operation cut short by the end of the input still runs with
    /// defaults.
    pub(crate) fn choose(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        self.byte().map_or(0, |b| usize::from(b) % n)
    }

    /// Picks one of `items` by the next byte; `None` if there are none (the
    /// byte is consumed either way, so later operations keep their
    /// alignment).
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        let b = usize::from(self.byte().unwrap_or(0));
        if items.is_empty() {
            None
        } else {
            Some(items[b % items.len()])
        }
    }
}
