//! Remote execution: the scheduler that hands actions to bots, the services in front of it
//! (Execution, Operations, Bots) and the worker bot (`strata bot`).

pub mod rwapi;
pub mod paths;
pub mod scheduler;
