//! The host backend: CPU agents that post requests through the very rings a GPU uses.

use crate::error::Result;
use crate::runtime::FileHandle;

/// A pending request of an [`Agent`].
#[derive(Debug)]
#[must_use = "wait for the ticket, or the agent waits for it when dropped"]
pub struct Ticket {
    pub(crate) slot: u32,
    pub(crate) ticket: u32,
}

/// A host requester: owns `agent_queue_depth` completion records and request buffers.
/// `Send`, not `Sync`: one thread drives an agent at a time.
pub struct Agent {
    _todo: (),
}

impl Agent {
    /// Requests this agent may have in flight.
    pub fn queue_depth(&self) -> usize {
        todo!()
    }
    /// Largest `len` one request may carry (bigger sync reads/writes are split).
    pub fn max_request(&self) -> usize {
        todo!()
    }
    /// Reads into `buf` at `offset`; returns bytes read (short at EOF). Blocks.
    pub fn read(&mut self, file: &FileHandle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        todo!("{file:?} {offset} {}", buf.len())
    }
    /// Writes `buf` at `offset`; returns bytes written. Blocks.
    pub fn write(&mut self, file: &FileHandle, offset: u64, buf: &[u8]) -> Result<usize> {
        todo!("{file:?} {offset} {}", buf.len())
    }
    /// Makes acknowledged writes durable. Blocks.
    pub fn fsync(&mut self, file: &FileHandle) -> Result<()> {
        todo!("{file:?}")
    }
    /// File size. Blocks.
    pub fn size(&mut self, file: &FileHandle) -> Result<u64> {
        todo!("{file:?}")
    }
    /// Hints that `[offset, offset+len)` will be read soon.
    pub fn prefetch(&mut self, file: &FileHandle, offset: u64, len: u64) -> Result<()> {
        todo!("{file:?} {offset} {len}")
    }
    /// Posts a read of `len` (≤ `max_request`) bytes; blocks only while the queue is full.
    pub fn submit_read(&mut self, file: &FileHandle, offset: u64, len: usize) -> Result<Ticket> {
        todo!("{file:?} {offset} {len}")
    }
    /// Posts a write of `data` (≤ `max_request` bytes).
    pub fn submit_write(&mut self, file: &FileHandle, offset: u64, data: &[u8]) -> Result<Ticket> {
        todo!("{file:?} {offset} {}", data.len())
    }
    /// Waits for a read and copies its bytes into `dst` (at least the read's length).
    pub fn wait_read(&mut self, ticket: Ticket, dst: &mut [u8]) -> Result<usize> {
        todo!("{ticket:?} {}", dst.len())
    }
    /// Waits for any request; returns its result (bytes, size, or 0).
    pub fn wait(&mut self, ticket: Ticket) -> Result<u64> {
        todo!("{ticket:?}")
    }
}
