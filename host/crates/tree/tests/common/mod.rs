// Shared helpers for the integration tests (included with `mod common;`).
#![allow(dead_code)]

use malt_tree::chain::{AgentSpec, ChainSpec};

pub fn chain(branches: &[u32]) -> ChainSpec {
    let roles = ["generator", "verifier", "refiner"];
    ChainSpec::new(
        branches
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let role = if i + 1 == branches.len() && i > 0 {
                    "refiner"
                } else {
                    roles[i % 2]
                };
                AgentSpec::new(&format!("a{i}-{role}"), role, "fake", b)
            })
            .collect(),
    )
    .expect("valid chain")
}

pub fn gvr(n: u32) -> ChainSpec {
    ChainSpec::new(vec![
        AgentSpec::new("generator", "generator", "fake", n),
        AgentSpec::new("verifier", "verifier", "fake", n),
        AgentSpec::new("refiner", "refiner", "fake", n),
    ])
    .expect("valid chain")
}
