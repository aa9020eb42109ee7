//! Bulk path on the host: one large file range into (or out of) a memory buffer, split into
//! chunks kept in flight on an I/O engine (no ring, no cache).
