//! The agent: the SWE-agent-style scaffold the policy acts through.
//!
//! Owns (so far): extracting the one command of a reply (`command`) and the
//! episode reward with its length penalty (`reward`). The tools, policies,
//! the episode loop, rollouts and evaluation come with the rest of the agent
//! issue. Does not own sandboxes or grading (see `env`).

pub mod command;
pub mod reward;
