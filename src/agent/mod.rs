//! The agent: the SWE-agent-style scaffold the policy acts through, the
//! episode loop, rollouts and evaluation.
//!
//! Owns: extracting the one command of a reply (`command`), the tools and
//! their observations (`tools`, `scaffold`), the episode loop with its turn
//! and context limits (`episode`), the reward with its length penalty
//! (`reward`), the policies (`policy`: the local engine; `endpoint`: an
//! OpenAI-compatible server; `scripted`: gold and submit-only), trajectories
//! and their files (`trajectory`), parallel rollouts (`rollout`), pass@k
//! statistics (`eval`) and imports of public trajectories (`import`).
//! Does not own sandboxes or grading (see `env`) or generation (`engine`).

pub mod command;
pub mod episode;
pub mod eval;
pub mod import;
pub mod endpoint;
pub mod policy;
pub mod reward;
pub mod rollout;
pub mod scaffold;
pub mod scripted;
pub mod tools;
pub mod trajectory;
