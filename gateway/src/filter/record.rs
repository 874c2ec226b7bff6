//! The record a filter is evaluated against.

use super::*;

/// A record as the fan-out sees it; parses the JSON value lazily, at most
/// once, however many filters look at it. Not `Sync`: build one per record
/// on the thread that evaluates the filters.
#[derive(Debug)]
pub struct RecordView<'a> {
    pub(super) key: Option<&'a [u8]>,
    pub(super) headers: &'a [(&'a str, Option<&'a [u8]>)],
    value: Option<&'a [u8]>,
    /// `None` inside: absent or not JSON.
    parsed: OnceCell<Option<Value>>,
    parses: Cell<usize>,
}

impl<'a> RecordView<'a> {
    pub fn new(
        key: Option<&'a [u8]>,
        headers: &'a [(&'a str, Option<&'a [u8]>)],
        value: Option<&'a [u8]>,
    ) -> Self {
        Self { key, headers, value, parsed: OnceCell::new(), parses: Cell::new(0) }
    }

    /// The record key.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// How many times the value was parsed (0 or 1); for tests.
    pub fn parse_count(&self) -> usize {
        self.parses.get()
    }

    pub(super) fn json(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| {
                let bytes = self.value?;
                self.parses.set(self.parses.get() + 1);
                serde_json::from_slice(bytes).ok()
            })
            .as_ref()
    }
}
