//! The receiver's export budgets (`bytes_per_day`, `files_per_day` in `--approval-policy`):
//! what it delivered in the last day, kept in its own delivery records — never what a sender
//! says — so a sender that ignores its budget is still stopped here.
//!
//! Owned by the publisher: a file is checked before it is placed (and before it begins to
//! wait for its model's signature, and again when released), and charged once it is placed;
//! the charges are committed with the deliveries' records. `sluice-recv release` counts a file
//! it lets out of the quarantine the same way. A file over the budget is not
//! placed: it fails with the budget's phrase.

use std::sync::Arc;

use sluice_common::approval::Policy;
use sluice_common::budget::{self, BudgetKey, Demand, Limit, Spent, Usage};
use sluice_protocol::manifest::Entry;

use crate::counters::Counters;
use crate::failure::Failure;
use crate::records::Records;

pub(crate) struct ExportBudget {
    policy: Arc<Policy>,
    limits: Vec<(BudgetKey, Limit)>,
    usage: Usage,
    /// Charged since the last commit.
    unspent: Vec<Spent>,
    /// The records could not say what was spent: every file under a budget is refused.
    unknown: Option<String>,
    counters: Arc<Counters>,
}

impl ExportBudget {
    /// The budgets of `policy`, with what `records` say was spent; `None` if it sets none.
    pub(crate) fn open(
        policy: Option<&Arc<Policy>>,
        records: &Records,
        counters: Arc<Counters>,
    ) -> Option<ExportBudget> {
        let policy = policy?;
        let limits: Vec<(BudgetKey, Limit)> = (policy.budgets().into_iter())
            .map(|(name, limit)| (name.to_string(), limit))
            .collect();
        if limits.is_empty() {
            return None;
        }
        let (usage, unknown) = match records.export_usage() {
            Ok(usage) => (usage, None),
            Err(e) => {
                tracing::error!("export budgets: {e}; files under a budget are refused");
                (Usage::default(), Some(e.to_string()))
            }
        };
        counters.set_export_budget(&limits, &usage);
        Some(ExportBudget {
            policy: policy.clone(),
            limits,
            usage,
            unspent: Vec::new(),
            unknown,
            counters,
        })
    }

    /// Whether the file `e` fits every budget that counts it: what it would take from them.
    /// `types`: what it is by content ([`types_by_content`]), for rules that name types.
    pub(crate) fn check(&self, e: &Entry, types: &[&str]) -> Result<Demand, Failure> {
        self.check_file(&e.path, e.size, types)
    }

    /// [`ExportBudget::check`] of the file at `path`, `size` bytes, of `types` by content.
    pub(crate) fn check_file(
        &self,
        path: &str,
        size: u64,
        types: &[&str],
    ) -> Result<Demand, Failure> {
        let demand = self.policy.demand_typed([(path, size, types.to_vec())]);
        if demand.is_empty() {
            return Ok(demand);
        }
        if let Some(why) = &self.unknown {
            return Err(Failure::OverBudget(format!("export budget unknown: {why}")));
        }
        demand
            .check(&self.usage, budget::minute_now())
            .map_err(|exceeded| Failure::OverBudget(exceeded.to_string()))?;
        Ok(demand)
    }

    /// Takes a checked `demand` (its file placed) from the budgets.
    pub(crate) fn charge(&mut self, demand: Demand) {
        if demand.is_empty() {
            return;
        }
        let now = budget::minute_now();
        self.usage.prune(now);
        self.usage.add(now, &demand.charges);
        self.unspent
            .extend(demand.charges.into_iter().map(|c| Spent {
                minute: now,
                budget: c.budget,
                bytes: c.bytes,
                files: c.files,
                export: None,
            }));
    }

    /// Charged since the last commit, not yet durable.
    pub(crate) fn has_unspent(&self) -> bool {
        !self.unspent.is_empty()
    }

    /// The charges to commit with the deliveries (the counters follow them).
    pub(crate) fn take_unspent(&mut self) -> Vec<Spent> {
        if !self.unspent.is_empty() {
            self.counters.set_export_budget(&self.limits, &self.usage);
        }
        std::mem::take(&mut self.unspent)
    }
}

/// What the file `file` (open for reading) is by content, as approval rules name types: what
/// the content gate finds it is (`sluice_inspect::file_type::file_types`).
pub(crate) fn types_by_content(mut file: &std::fs::File) -> std::io::Result<Vec<&'static str>> {
    sluice_inspect::file_type::file_types(&mut file)
}
