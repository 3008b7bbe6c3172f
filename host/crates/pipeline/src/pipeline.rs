//! `malt run`: generate -> credit -> train -> star -> online (with `[online]`) -> eval, for each round of `[rounds]`; each
//! stage skipped when its record in `<round>/stages/` says its outputs are current, resumed when
//! it was interrupted, recomputed when an input changed (the stage contract: [`crate::stage`]).
//! Hot reload ([`crate::live_reload`]) applies new plugins between trees and questions and a
//! new config at stage boundaries.
//!
//! Round k (>= 2) samples its trees with round k-1's adapters and trains fresh adapters from the
//! base model on them (as STaR restarts from the base model each iteration); its STaR samples
//! come from round k-1's STaR model. Every round keeps its own trees, datasets, adapters and
//! report (`malt_layout`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use malt_layout::{RoundLayout, RunLayout};

use crate::live_reload::LiveReload;
use crate::session::Session;
use crate::stage::{credit, eval, generate, online, run_stage, star, train, Models, Stage};

pub struct Options {
    pub config: PathBuf,
    /// Stop after this stage: `STAGE` (one of [`STAGES`], round 1) or `STAGE@K` (round K).
    pub until: Option<String>,
    /// Watch the config and plugins and apply valid edits while running.
    pub hot_reload: bool,
}

/// The stages of a round in order, by name.
pub const STAGES: [&str; 6] = [
    generate::Generate::NAME,
    credit::Credit::NAME,
    train::Train::NAME,
    star::Star::NAME,
    online::Online::NAME,
    eval::Eval::NAME,
];

/// At a stage boundary: apply a newer valid config and plugin set, if the reloader has one.
fn apply_reload(s: &mut Session, live: Option<&LiveReload>, stage: &str) -> anyhow::Result<()> {
    if let Some(loaded) = live.and_then(|l| l.at_stage(stage)) {
        s.apply(&loaded.config, loaded.plugins.clone())?;
    }
    Ok(())
}

/// `--until STAGE[@ROUND]`: the stage and round to stop after (round 1 when not given).
pub fn parse_until(until: &str) -> anyhow::Result<(String, u32)> {
    let (stage, round) = match until.split_once('@') {
        Some((s, r)) => (
            s,
            r.parse::<u32>().ok().filter(|&r| r >= 1).ok_or_else(|| {
                anyhow::anyhow!("--until {until:?}: expected STAGE or STAGE@ROUND with ROUND >= 1")
            })?,
        ),
        None => (until, 1),
    };
    if !STAGES.contains(&stage) {
        anyhow::bail!(
            "unknown stage {stage:?} (stages: {}; STAGE@K for round K)",
            STAGES.join(", ")
        );
    }
    Ok((stage.to_owned(), round))
}

/// Runs stage `S` of `round` when the config wants it, with the `== stage (t s)` line.
fn step<S: Stage>(
    s: &mut Session,
    models: &mut Models,
    round: &RoundLayout,
    start: Instant,
) -> anyhow::Result<()> {
    if !S::wanted(s) {
        return Ok(());
    }
    let label = if s.config.rounds.count > 1 {
        format!("{} (round {})", S::NAME, round.round())
    } else {
        S::NAME.to_owned()
    };
    tracing::info!("== {label} ({:.0} s)", start.elapsed().as_secs_f64());
    let ran = run_stage::<S>(s, models, round).map(drop);
    malt_model::process::release_freed();
    ran
}

/// The whole pipeline: every stage of round 1, then of round 2, ... (`[rounds] count`).
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let start = Instant::now();
    let until = opts.until.as_deref().map(parse_until).transpose()?;
    // One absolute path for the session and the reloader, so both resolve relative paths alike.
    let config_path = std::path::absolute(&opts.config)
        .with_context(|| format!("bad config path {}", opts.config.display()))?;
    let mut s = Session::open(&config_path)?;
    let live = if opts.hot_reload {
        let l = LiveReload::start(
            s.runtime.clone(),
            &config_path,
            &s.config,
            s.scorer.plugins(),
        )
        .context("starting hot reload (pass --no-reload to run without it)")?;
        s.scorer.follow(Some(l.clone()));
        s.live = Some(l.clone());
        Some(l)
    } else {
        None
    };
    let mut models = Models::for_config(&s.config);
    let mut k = 1;
    let mut first = true;
    // The round count is read again after every reload: an edit may add rounds.
    while k <= s.config.rounds.count {
        let round = RunLayout::new(&s.config.run.dir).round(k);
        for name in STAGES {
            if first {
                // The config the run started with applies to the first stage; edits from then
                // on at each boundary.
                first = false;
            } else {
                apply_reload(&mut s, live.as_deref(), name)?;
            }
            match name {
                generate::Generate::NAME => {
                    step::<generate::Generate>(&mut s, &mut models, &round, start)?
                }
                credit::Credit::NAME => step::<credit::Credit>(&mut s, &mut models, &round, start)?,
                train::Train::NAME => step::<train::Train>(&mut s, &mut models, &round, start)?,
                star::Star::NAME => step::<star::Star>(&mut s, &mut models, &round, start)?,
                online::Online::NAME => step::<online::Online>(&mut s, &mut models, &round, start)?,
                _ => step::<eval::Eval>(&mut s, &mut models, &round, start)?,
            }
            if until.as_ref() == Some(&(name.to_owned(), k)) {
                return Ok(());
            }
        }
        k += 1;
    }
    let last = RunLayout::new(&s.config.run.dir).round(s.config.rounds.count);
    tracing::info!(
        "done in {:.1} s; report in {}",
        start.elapsed().as_secs_f64(),
        last.eval().display()
    );
    Ok(())
}
