//! Remote execution on the server side: Execute's admission of actions and the scheduler that hands
//! them to bots. The REAPI rules bots share (paths, platform, outputs) are in `crate::protocol`.

pub mod admission;
pub mod scheduler;
