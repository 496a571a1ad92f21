//! Helpers shared by the in-process node API tests.

#![allow(dead_code)]

pub(crate) mod fake_api;
pub(crate) mod fixtures;
pub(crate) mod h2_raw;
