//! appliance: one binary that turns an open-weight LLM into a better
//! software-engineering agent through reinforcement learning.

pub mod tensor;
