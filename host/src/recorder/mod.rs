//! Recording transactions: the per-worker spool and the writer that drains it into the store.
