//! io_uring engine: batched submission, fixed buffers, retries of short transfers.
