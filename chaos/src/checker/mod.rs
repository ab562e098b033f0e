//! Linearizability checking for a key-value register with CAS.
//!
//! The history is split per key (operations on different keys commute, so the
//! whole history is linearizable iff every key's sub-history is), and each key
//! is checked with the Wing–Gong search as Porcupine implements it (Lowe's
//! memoization): walk the call/return events in time order; at a call, try to
//! linearize that operation now (the model must accept its answer), remembering
//! (set of linearized ops, state) pairs already explored; at a return whose
//! operation was not linearized yet, backtrack. Unknown outcomes never return,
//! so they may be placed anywhere after their invoke, or nowhere.
//!
//! The search is exponential in the worst case, so it runs under a step budget;
//! running out is reported as `Unknown`, never as a pass. A violation reports
//! the key, the longest linearizable prefix found (with the state after each
//! step) and the operation that could not be placed: the smallest sub-history
//! a person needs to see.

use std::collections::HashMap;
use std::collections::HashSet;

use crate::history::Call;
use crate::history::Op;
use crate::history::Ret;

/// Result for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Not linearizable; the report explains the failing sub-history.
    Violation(String),
    /// The search budget ran out before a verdict.
    Unknown,
}

/// Result for a whole history.
#[derive(Debug, Clone)]
pub struct Report {
    pub keys: usize,
    pub ops: usize,
    pub violations: Vec<(String, String)>,
    pub undecided: Vec<String>,
    pub steps: u64,
}

impl Report {
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty() && self.undecided.is_empty()
    }
}

/// Checks every key of `ops`; `budget` bounds the search steps per key.
pub fn check(ops: &[Op], budget: u64) -> Report {
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort();
    let mut report = Report {
        keys: keys.len(),
        ops: ops.len(),
        violations: Vec::new(),
        undecided: Vec::new(),
        steps: 0,
    };
    for key in keys {
        let (verdict, steps) = check_key(&by_key[key], budget);
        report.steps += steps;
        match verdict {
            Verdict::Ok => {}
            Verdict::Violation(why) => report.violations.push((key.to_string(), why)),
            Verdict::Unknown => report.undecided.push(key.to_string()),
        }
    }
    report
}

/// An operation reduced to interned values: 0 is "absent".
#[derive(Debug, Clone, Copy)]
enum Step {
    Read(u32),
    Write(u32),
    Cas {
        expect: u32,
        new: u32,
        ok: Option<bool>,
    },
}

/// The register model: the next state if `step` can happen in `state`.
fn apply(state: u32, step: Step) -> Option<u32> {
    match step {
        Step::Read(v) => (v == state).then_some(state),
        Step::Write(v) => Some(v),
        Step::Cas { expect, new, ok } => match ok {
            Some(true) => (state == expect).then_some(new),
            Some(false) => (state != expect).then_some(state),
            // Unknown: it either applied or found another value; both are one outcome.
            None => Some(if state == expect { new } else { state }),
        },
    }
}

/// Checks one key's operations; returns the verdict and the steps spent.
///
/// Unknown-outcome writes and CASes whose value nobody ever observed (no read
/// returned it, no CAS expected it) are first left out: they are what makes the
/// search explode after a leader pause, and dropping them is sound — a
/// linearization of the rest extends to the full history by placing them last,
/// which their never-ending intervals allow. Only if that smaller history does
/// not pass is the full one searched, so a reported violation is always real.
pub fn check_key(ops: &[&Op], budget: u64) -> (Verdict, u64) {
    let observed = observed_values(ops);
    let pruned: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|op| match (&op.call, &op.ret) {
            (Call::Write { value }, Ret::Unknown) => observed.contains(value.as_str()),
            (Call::Cas { new, .. }, Ret::Unknown) => observed.contains(new.as_str()),
            _ => true,
        })
        .collect();
    if pruned.len() == ops.len() {
        return search(ops, budget);
    }
    let (verdict, spent) = search(&pruned, budget);
    if verdict == Verdict::Ok {
        return (verdict, spent);
    }
    let (verdict, more) = search(ops, budget);
    (verdict, spent + more)
}

/// Values some operation observed: returned by a read, or expected by a CAS.
fn observed_values<'a>(ops: &[&'a Op]) -> HashSet<&'a str> {
    let mut observed = HashSet::new();
    for op in ops {
        match (&op.call, &op.ret) {
            (Call::Read, Ret::Read { value: Some(v) }) => {
                observed.insert(v.as_str());
            }
            (
                Call::Cas {
                    expect: Some(v), ..
                },
                _,
            ) => {
                observed.insert(v.as_str());
            }
            _ => {}
        }
    }
    observed
}

/// The Wing–Gong/Porcupine search over one key's operations.
fn search<'a>(ops: &[&'a Op], budget: u64) -> (Verdict, u64) {
    // Intern values; reads without an answer never reach here (see `history`).
    fn intern<'a>(
        values: &mut HashMap<&'a str, u32>,
        names: &mut Vec<Option<&'a str>>,
        v: Option<&'a str>,
    ) -> u32 {
        match v {
            None => 0,
            Some(s) => *values.entry(s).or_insert_with(|| {
                names.push(Some(s));
                (names.len() - 1) as u32
            }),
        }
    }
    // Values nobody observed (no read returned them, no CAS expected them) can only
    // matter as "something else" — a failed CAS needs the state to differ from what it
    // expected — so every unknown operation writing one writes the same symbol,
    // UNOBSERVED. Such operations are then interchangeable within a class (same kind,
    // same expected value), and the search only ever linearizes the earliest-invoked
    // pending one of a class: any order using a later one works with the earlier one
    // in its place (its interval [invoke, ∞) contains the later one's). This turns
    // 2^k subsets of k pending writes into k + 1 and keeps leader pauses checkable.
    let observed = observed_values(ops);
    let mut values: HashMap<&'a str, u32> = HashMap::new();
    let mut names: Vec<Option<&'a str>> = vec![None, Some("(a value nobody observed)")];
    const UNOBSERVED: u32 = 1;
    let mut id = |v: Option<&'a str>| intern(&mut values, &mut names, v);
    let mut steps = Vec::with_capacity(ops.len());
    let mut kept: Vec<&'a Op> = Vec::with_capacity(ops.len());
    // Interchangeability class of pending operations writing UNOBSERVED: (is_cas, expect).
    let mut class_of: Vec<Option<(bool, u32)>> = Vec::with_capacity(ops.len());
    for &op in ops {
        let (step, class) = match (&op.call, &op.ret) {
            (Call::Read, Ret::Read { value }) => (Step::Read(id(value.as_deref())), None),
            (Call::Read, _) => continue,
            (Call::Write { value }, Ret::Write) => (Step::Write(id(Some(value))), None),
            (Call::Write { value }, Ret::Unknown) if !observed.contains(value.as_str()) => {
                (Step::Write(UNOBSERVED), Some((false, 0)))
            }
            (Call::Write { value }, Ret::Unknown) => (Step::Write(id(Some(value))), None),
            (Call::Cas { expect, new }, Ret::Cas { ok }) => (
                Step::Cas {
                    expect: id(expect.as_deref()),
                    new: id(Some(new)),
                    ok: Some(*ok),
                },
                None,
            ),
            (Call::Cas { expect, new }, Ret::Unknown) => {
                let expect = id(expect.as_deref());
                if observed.contains(new.as_str()) {
                    let new = id(Some(new));
                    (
                        Step::Cas {
                            expect,
                            new,
                            ok: None,
                        },
                        None,
                    )
                } else {
                    let step = Step::Cas {
                        expect,
                        new: UNOBSERVED,
                        ok: None,
                    };
                    (step, Some((true, expect)))
                }
            }
            // A mismatched answer type is a harness bug; checking it as-is would be wrong.
            _ => continue,
        };
        steps.push(step);
        kept.push(op);
        class_of.push(class);
    }
    let n = kept.len();
    if n == 0 {
        return (Verdict::Ok, 0);
    }

    // Events: call of op i is entry 2i, its return 2i+1; list order is by time,
    // calls before returns at equal times (touching intervals count as concurrent).
    let mut order: Vec<usize> = (0..2 * n).collect();
    let time = |e: usize| -> (u64, u8) {
        let op = kept[e / 2];
        if e.is_multiple_of(2) {
            (op.invoke_us, 0)
        } else {
            (op.complete_us.max(op.invoke_us), 1)
        }
    };
    order.sort_by_key(|e| (time(*e), *e));
    // Members of each class in list order (the order their calls are visited).
    let mut classes: HashMap<(bool, u32), Vec<usize>> = HashMap::new();
    for &e in &order {
        if e.is_multiple_of(2)
            && let Some(c) = class_of[e / 2]
        {
            classes.entry(c).or_default().push(e / 2);
        }
    }
    let head = 2 * n;
    let mut next: Vec<Option<usize>> = vec![None; 2 * n + 1];
    let mut prev: Vec<usize> = vec![head; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = Some(e);
        prev[e] = last;
        last = e;
    }

    let lift = |next: &mut Vec<Option<usize>>, prev: &mut Vec<usize>, call: usize| {
        for e in [call, call + 1] {
            let p = prev[e];
            let nx = next[e];
            next[p] = nx;
            if let Some(nx) = nx {
                prev[nx] = p;
            }
        }
    };
    let unlift = |next: &mut Vec<Option<usize>>, prev: &mut Vec<usize>, call: usize| {
        for e in [call + 1, call] {
            let p = prev[e];
            let nx = next[p];
            next[e] = nx;
            next[p] = Some(e);
            if let Some(nx) = nx {
                prev[nx] = e;
            }
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut calls: Vec<(usize, u32)> = Vec::new();
    let mut state: u32 = 0;
    let mut entry = next[head];
    let mut spent: u64 = 0;
    // Diagnostics: the deepest linearized prefix seen and the op that blocked it.
    let mut best: (Vec<(usize, u32)>, usize) = (Vec::new(), usize::MAX);

    while next[head].is_some() {
        spent += 1;
        if spent > budget {
            return (Verdict::Unknown, spent);
        }
        let Some(e) = entry else {
            // Cannot happen: the list always ends in a return event.
            return (Verdict::Unknown, spent);
        };
        let i = e / 2;
        if e.is_multiple_of(2) {
            // Symmetry: only the earliest pending member of a class may go next.
            let redundant = class_of[i].is_some_and(|c| {
                classes[&c]
                    .iter()
                    .find(|j| linearized[*j / 64] & (1 << (*j % 64)) == 0)
                    .is_some_and(|first| *first != i)
            });
            if redundant {
                entry = next[e];
                continue;
            }
            if let Some(ns) = apply(state, steps[i]) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin, ns)) {
                    calls.push((e, state));
                    state = ns;
                    linearized[i / 64] |= 1 << (i % 64);
                    lift(&mut next, &mut prev, e);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[e];
        } else {
            if calls.len() >= best.0.len() && best.1 != i {
                let mut seq = Vec::with_capacity(calls.len());
                let mut s = 0u32;
                for (c, _) in &calls {
                    s = apply(s, steps[c / 2]).unwrap_or(s);
                    seq.push((c / 2, s));
                }
                best = (seq, i);
            }
            let Some((c, s)) = calls.pop() else {
                return (Verdict::Violation(explain(&kept, &names, &best)), spent);
            };
            let j = c / 2;
            linearized[j / 64] &= !(1 << (j % 64));
            state = s;
            unlift(&mut next, &mut prev, c);
            entry = next[c];
        }
    }
    (Verdict::Ok, spent)
}

fn explain(ops: &[&Op], names: &[Option<&str>], best: &(Vec<(usize, u32)>, usize)) -> String {
    let (seq, stuck) = best;
    let name = |v: u32| format!("{:?}", names.get(v as usize).copied().flatten());
    let mut out = String::new();
    let shown = seq.len().saturating_sub(8);
    out.push_str(&format!(
        "longest linearizable prefix: {} of {} operations{}\n",
        seq.len(),
        ops.len(),
        if shown > 0 {
            format!(" (last 8 shown; {shown} before)")
        } else {
            String::new()
        }
    ));
    for (i, s) in &seq[shown..] {
        out.push_str(&format!("  {}  → state {}\n", ops[*i].describe(), name(*s)));
    }
    if let Some(op) = ops.get(*stuck) {
        out.push_str(&format!(
            "no order places this operation before it returned:\n  {}\n",
            op.describe()
        ));
        let placed: HashSet<usize> = seq.iter().map(|(i, _)| *i).collect();
        let concurrent: Vec<String> = ops
            .iter()
            .enumerate()
            .filter(|(i, o)| !placed.contains(i) && *i != *stuck && o.invoke_us <= op.complete_us)
            .map(|(_, o)| format!("  {}", o.describe()))
            .take(12)
            .collect();
        if !concurrent.is_empty() {
            out.push_str("other operations invoked before it returned and not placed:\n");
            out.push_str(&concurrent.join("\n"));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
