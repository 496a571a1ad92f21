//! Helpers shared by the in-process tests.

#![allow(dead_code)]

pub(crate) mod fake_api;
pub(crate) mod fixtures;
pub(crate) mod h2_raw;
pub(crate) mod node_api;
pub(crate) mod reviewer;
