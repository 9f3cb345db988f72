//! The store contract suite (written by the store helper).
