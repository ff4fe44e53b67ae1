//! Strata: a remote build cache speaking REAPI v2. The binary (`main.rs`) is a thin command line over
//! this library, so that tests start the very same server in-process.

pub mod action_results;
pub mod admin;
pub mod auth;
pub mod assets;
pub mod bench;
pub mod bot;
pub mod cas;
pub mod config;
pub mod exec;
pub mod health;
pub mod http;
pub mod instances;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod services;
pub mod quote;
pub mod status;
pub mod storage;
pub mod tree;
pub mod units;
pub mod uploads;
