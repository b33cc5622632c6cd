//! A journal that keeps every saved version in memory, for tests of the engines.

use std::sync::Mutex;

use super::Journal;

pub struct MemoryJournal<R> {
    pub saved: Mutex<Vec<R>>,
}

impl<R> Default for MemoryJournal<R> {
    fn default() -> Self {
        Self {
            saved: Mutex::new(Vec::new()),
        }
    }
}

impl<R: Clone + Send + Sync> Journal<R> for MemoryJournal<R> {
    async fn save(&self, record: &R) -> Result<(), String> {
        self.saved.lock().unwrap().push(record.clone());
        Ok(())
    }
}
