//! The merge of per-page records into the knowledge graph, as a differential dataflow on
//! timely workers.
//!
//! Records ([`Rec`]) arrive with multiplicities: a full run feeds every page's records
//! (each worker parses its share of the pages), an incremental run feeds the previous
//! output's rows decomposed into records, minus the records of the pages that changed as
//! they were, plus their records as they are now. The dataflow consolidates them and
//! computes, per entity key (titles normalised, redirects resolved: the deduplication),
//! its frequency, pages, alias counts, type votes and own page, and per relation
//! (subject, predicate, object) its supporting pages (the relation dedup), then the
//! degree of every entity from the distinct relations (the degree counts). Every
//! aggregate is a sum or a set of records, so the previous output plus a difference gives
//! exactly what a run from scratch gives. Two aggregates are too large to feed back whole
//! for the hub entities an incremental run touches, and enter as a base plus changes
//! instead: an entity's degree (a count of the relations kept as they are, plus those
//! rebuilt) and its pages (the previous row's list, plus and minus the changed pages'
//! touches; the list itself is merged when the row is built).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::{Input, InputSession};
use fleming_runtime::CancelToken;
use fleming_runtime::cluster::Cluster;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::Input as _;
use timely::dataflow::operators::core::Probe as _;
use timely::dataflow::operators::generic::operator::Operator as _;

use super::rules::{Names, OwnVal, Rec, RelKey, SupportVal};

/// An entity's aggregate.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityAgg {
    /// Link occurrences.
    pub frequency: i64,
    /// Pages touching it (hashes), sorted: all of them in a full run; in an incremental run
    /// those added to the previous row's list.
    pub pages: Vec<u64>,
    /// Pages taken from the previous row's list (incremental runs), sorted.
    pub pages_removed: Vec<u64>,
    /// Length of the previous row's list that an incremental run starts from (0 in a full
    /// run).
    pub pages_base: i64,
    /// Aliases (hashes) with their counts, sorted by alias hash.
    pub aliases: Vec<(u64, i64)>,
    /// Votes per type index.
    pub votes: Vec<i64>,
    /// Its own page.
    pub own: Option<OwnVal>,
    /// Distinct relations it takes part in.
    pub degree: i64,
}

/// A part of an entity's aggregate, before assembly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Part {
    Freq(i64),
    /// Pages added and removed.
    Pages(Vec<u64>, Vec<u64>),
    PagesBase(i64),
    Alias(u64, i64),
    Vote(u8, i64),
    Own(OwnVal),
    Degree(i64),
}

/// A relation with its supports.
pub type RelRow = (RelKey, Vec<SupportVal>);

/// What the dataflow produced.
#[derive(Debug, Default)]
pub struct GraphOut {
    /// Entities, in key order (the entities table's order: extract builds it in this order).
    pub entities: Vec<(u64, EntityAgg)>,
    /// Relations with their supports, in key order: (subject, predicate, object), the
    /// relations table's order.
    pub relations: Vec<RelRow>,
    /// Records that consolidated to a negative multiplicity (an inconsistent previous
    /// output); 0 when all is well.
    pub negative: u64,
    /// Strings of the hashes, gathered from the workers.
    pub names: Names,
    /// Seconds spent after the workers finished: merging their strings, sorting the rows.
    pub finish_s: f64,
    /// Seconds the slowest worker spent feeding its records (parsing, in a full run).
    pub feed_s: f64,
    /// Seconds the slowest worker then spent running the dataflow to completion.
    pub dataflow_s: f64,
}

/// Feeds a worker's share of the records: called with (worker index, workers, emit), where
/// emit takes a record and its multiplicity, and the worker's string table.
pub type Feed = dyn Fn(usize, usize, &mut dyn FnMut(Rec, i64), &mut Names) -> anyhow::Result<()> + Send + Sync;

/// The dataflow's inputs, one per kind of record.
struct Inputs {
    freq: InputSession<u64, u64, isize>,
    touch: InputSession<u64, (u64, u64), isize>,
    alias: InputSession<u64, (u64, u64), isize>,
    vote: InputSession<u64, (u64, u8), isize>,
    own: InputSession<u64, (u64, OwnVal), isize>,
    degree_base: InputSession<u64, u64, isize>,
    pages_base: InputSession<u64, u64, isize>,
    support: InputSession<u64, (RelKey, SupportVal), isize>,
    /// Records that the dataflow only counts, summed here first: the same few keys recur
    /// on many pages, and a sum is far cheaper than sorting every occurrence.
    sums: Sums,
}

#[derive(Default)]
struct Sums {
    freq: FxHashMap<u64, isize>,
    alias: FxHashMap<(u64, u64), isize>,
    vote: FxHashMap<(u64, u8), isize>,
    degree_base: FxHashMap<u64, isize>,
    pages_base: FxHashMap<u64, isize>,
}

impl Inputs {
    fn update(&mut self, r: Rec, d: isize) {
        match r {
            Rec::Freq(k) => *self.sums.freq.entry(k).or_default() += d,
            Rec::Touch(k, p) => self.touch.update((k, p), d),
            Rec::Alias(k, a) => *self.sums.alias.entry((k, a)).or_default() += d,
            Rec::Vote(k, t) => *self.sums.vote.entry((k, t)).or_default() += d,
            Rec::Own(k, o) => self.own.update((k, o), d),
            Rec::DegreeBase(k) => *self.sums.degree_base.entry(k).or_default() += d,
            Rec::PagesBase(k) => *self.sums.pages_base.entry(k).or_default() += d,
            Rec::Support(k, s) => self.support.update((k, s), d),
        }
    }

    /// Every record is in: sends the sums and closes the inputs, so that the dataflow can
    /// complete.
    fn close(mut self) {
        fn send<D: differential_dataflow::Data>(to: &mut InputSession<u64, D, isize>, sums: FxHashMap<D, isize>) {
            for (k, d) in sums.into_iter().filter(|(_, d)| *d != 0) {
                to.update(k, d);
            }
        }
        let sums = std::mem::take(&mut self.sums);
        send(&mut self.freq, sums.freq);
        send(&mut self.alias, sums.alias);
        send(&mut self.vote, sums.vote);
        send(&mut self.degree_base, sums.degree_base);
        send(&mut self.pages_base, sums.pages_base);
    }
}

/// What each worker sends to worker 0 besides the rows, once its share is done.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Side {
    /// The strings of the hashes it saw.
    Names(Names),
    /// Records that consolidated to a negative multiplicity.
    Negative(u64),
    /// Seconds it spent feeding, then running the dataflow.
    Timing(f64, f64),
    /// Its feed failed.
    Error(String),
}

/// What worker 0 gathers.
#[derive(Default)]
struct Gathered {
    entities: Vec<(u64, EntityAgg)>,
    relations: Vec<RelRow>,
    sides: Vec<Side>,
}

/// Runs the merge on `threads` timely workers, and in a cluster run on as many on every
/// process (each feeds its share). Worker 0 gathers the rows: the result, on process 0;
/// `None` on the other processes of a cluster.
pub fn run(
    threads: usize,
    cluster: Option<&Cluster>,
    cancel: &CancelToken,
    feed: Arc<Feed>,
) -> anyhow::Result<Option<GraphOut>> {
    let gathered: Arc<Mutex<Gathered>> = Arc::default();
    let g2 = gathered.clone();
    crate::dataflow::execute(threads, cluster, cancel, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let negative = Arc::new(AtomicU64::new(0));
        let (n3, n5) = (negative.clone(), negative.clone());
        let (e3, r3, s3) = (g2.clone(), g2.clone(), g2.clone());
        let (mut inputs, probe, mut side_in) = worker.dataflow::<u64, _, _>(|scope| {
            // One input per kind of record: a single input fanned out by kind would copy
            // every batch to each of the seven consumers.
            let (freq_in, freq) = scope.new_collection::<u64, isize>();
            let (touch_in, touch) = scope.new_collection::<(u64, u64), isize>();
            let (alias_in, alias) = scope.new_collection::<(u64, u64), isize>();
            let (vote_in, vote) = scope.new_collection::<(u64, u8), isize>();
            let (own_in, own) = scope.new_collection::<(u64, OwnVal), isize>();
            let (degree_in, degree_base) = scope.new_collection::<u64, isize>();
            let (pages_base_in, pages_base) = scope.new_collection::<u64, isize>();
            let (support_in, support) = scope.new_collection::<(RelKey, SupportVal), isize>();
            let inputs = Inputs {
                freq: freq_in,
                touch: touch_in,
                alias: alias_in,
                vote: vote_in,
                own: own_in,
                degree_base: degree_in,
                pages_base: pages_base_in,
                support: support_in,
                sums: Sums::default(),
            };

            // Relation dedup: one row per (subject, predicate, object) with its supports.
            let rels = support.reduce(move |_key, input, output| {
                let mut sups = Vec::with_capacity(input.len());
                for (s, r) in input {
                    if *r > 0 {
                        sups.push(**s);
                    } else {
                        n3.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !sups.is_empty() {
                    output.push((sups, 1isize));
                }
            });
            rels.inner.clone().sink(to_worker_0(), "GatherRelations", move |(input, _)| {
                let mut out = r3.lock().unwrap_or_else(|e| e.into_inner());
                input.for_each(|_, batch| {
                    for ((k, sups), _t, d) in batch.drain(..) {
                        if d > 0 {
                            out.relations.push((k, sups));
                        }
                    }
                });
            });
            // Degree counts: distinct relations per entity.
            let degree = rels
                .flat_map(|((s, _p, o), _)| if s == o { vec![s] } else { vec![s, o] })
                .concat(degree_base)
                .count()
                .map(|(k, n)| (k, Part::Degree(n as i64)));
            let freq = freq.count().map(|(k, n)| (k, Part::Freq(n as i64)));
            // A page touches an entity at most once, so a negative count is a page that an
            // incremental run takes from the previous row's list.
            let pages = touch.reduce(move |_k, input, output| {
                let (mut added, mut removed) = (Vec::with_capacity(input.len()), Vec::new());
                for (p, r) in input {
                    if *r > 0 { added.push(**p) } else { removed.push(**p) }
                }
                output.push((Part::Pages(added, removed), 1isize));
            });
            let pages_base = pages_base.count().map(|(k, n)| (k, Part::PagesBase(n as i64)));
            let alias = alias.count().map(|((k, a), n)| (k, Part::Alias(a, n as i64)));
            let vote = vote.count().map(|((k, t), n)| (k, Part::Vote(t, n as i64)));
            let own = own.reduce(|_k, input, output| {
                if let Some((o, _)) = input.iter().find(|(_, r)| *r > 0) {
                    output.push((Part::Own(**o), 1isize));
                }
            });
            // Entity dedup: every record of a key is assembled into one row.
            let ents =
                freq.concat(pages).concat(pages_base).concat(alias).concat(vote).concat(own).concat(degree).reduce(
                    move |_k, input, output| {
                        let mut agg = EntityAgg { votes: vec![0; super::lexicon::TYPES.len()], ..Default::default() };
                        let mut any = false;
                        for (part, r) in input {
                            if *r <= 0 {
                                n5.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            match part {
                                Part::Freq(n) => {
                                    agg.frequency += n;
                                    any |= *n != 0;
                                }
                                Part::Pages(added, removed) => {
                                    agg.pages = added.clone();
                                    agg.pages_removed = removed.clone();
                                }
                                Part::PagesBase(n) => agg.pages_base = *n,
                                Part::Alias(a, n) => agg.aliases.push((*a, *n)),
                                Part::Vote(t, n) => {
                                    if let Some(x) = agg.votes.get_mut(*t as usize) {
                                        *x += n;
                                    }
                                }
                                Part::Own(o) => {
                                    agg.own = Some(*o);
                                    any = true;
                                }
                                Part::Degree(n) => agg.degree = *n,
                            }
                        }
                        let pages = agg.pages_base + agg.pages.len() as i64 - agg.pages_removed.len() as i64;
                        if agg.pages_base == 0 && !agg.pages_removed.is_empty() {
                            // Taken from a list that is not there.
                            n5.fetch_add(agg.pages_removed.len() as u64, Ordering::Relaxed);
                        }
                        if any || pages > 0 {
                            output.push((agg, 1isize));
                        }
                    },
                );
            let (probe, ents) = ents.inner.probe();
            ents.sink(to_worker_0(), "GatherEntities", move |(input, _)| {
                let mut out = e3.lock().unwrap_or_else(|e| e.into_inner());
                input.for_each(|_, batch| {
                    for ((k, agg), _t, d) in batch.drain(..) {
                        if d > 0 {
                            out.entities.push((k, agg));
                        }
                    }
                });
            });
            let (side_in, sides) = scope.new_input::<Vec<Side>>();
            sides.sink(to_worker_0(), "GatherSides", move |(input, _)| {
                let mut out = s3.lock().unwrap_or_else(|e| e.into_inner());
                input.for_each(|_, batch| out.sides.append(batch));
            });
            (inputs, probe, side_in)
        });
        let mut local = Names::default();
        let mut emit = |r: Rec, d: i64| inputs.update(r, d as isize);
        let started = std::time::Instant::now();
        let fed = feed(index, peers, &mut emit, &mut local);
        inputs.close();
        let fed_s = started.elapsed().as_secs_f64();
        worker.step_while(|| probe.less_than(&1));
        let done_s = started.elapsed().as_secs_f64() - fed_s;
        // The worker's share is done: what worker 0 needs besides the rows.
        if let Err(e) = fed {
            side_in.send(Side::Error(format!("{e:#}")));
        }
        side_in.send(Side::Negative(negative.load(Ordering::Relaxed)));
        side_in.send(Side::Timing(fed_s, done_s));
        side_in.send(Side::Names(local));
        drop(side_in);
    })?;
    if cluster.is_some_and(|c| !c.is_leader()) {
        return Ok(None);
    }
    let finish = std::time::Instant::now();
    let Gathered { mut entities, mut relations, sides } =
        std::mem::take(&mut *gathered.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out = GraphOut::default();
    let mut maps = Vec::new();
    for side in sides {
        match side {
            Side::Error(e) => anyhow::bail!("{e}"),
            Side::Negative(n) => out.negative += n,
            Side::Timing(fed, done) => {
                out.feed_s = out.feed_s.max(fed);
                out.dataflow_s = out.dataflow_s.max(done);
            }
            Side::Names(m) => maps.push(m),
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let mut merged = if maps.is_empty() { Names::default() } else { maps.remove(0) };
    for m in maps {
        for (k, v) in m {
            merged.entry(k).or_insert(v);
        }
    }
    out.names = merged;
    entities.sort_by_key(|(k, _)| *k);
    relations.sort_by_key(|(k, _)| *k);
    out.entities = entities;
    out.relations = relations;
    out.finish_s = finish.elapsed().as_secs_f64();
    Ok(Some(out))
}

/// Routes every record to worker 0, which gathers the result.
fn to_worker_0<D: 'static>() -> Exchange<D, impl FnMut(&D) -> u64 + 'static> {
    Exchange::new(|_: &D| 0u64)
}
