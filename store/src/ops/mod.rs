//! Operations on a store, one file each.

pub mod get;
pub mod put;
pub mod refs;
