//! Layers: stores that wrap stores, one behaviour each. `Tiered` composes tiers (order, size classes,
//! promotion, durability); the rest each add one rule in front of any store.

pub mod action_cache;
pub mod empty_blob;
pub mod existence_cache;
pub mod metered;
pub mod single_flight;
pub mod spool;
pub mod tiered;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tiered_tests;
