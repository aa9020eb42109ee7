//! The public entry point: a `Runtime` owning the file table, daemon, cache and backends.
