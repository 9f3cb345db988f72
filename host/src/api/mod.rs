//! The management API (written by the API helper).
