use super::*;
use crate::questions::from_table;
use fleming_runtime::Harness;
use fleming_runtime::harness::HarnessOutput;

fn run(ents: &Table, rels: &Table, params: Value, threads: usize) -> HarnessOutput {
    Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(params)
        .threads(threads)
        .run()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// (subject, predicate, object) triples and names/types, read back from the tables.
struct Triples {
    set: HashSet<(String, String, String)>,
    type_of: HashMap<String, String>,
    by_name: HashMap<String, String>,
}

fn triples(ents: &Table, rels: &Table) -> Triples {
    let (g, _) = Graph::build(ents, rels, 0.0).unwrap();
    let set = g
        .rel_ends
        .iter()
        .map(|&(s, o, p)| (g.ids[s as usize].clone(), g.pred_names[p as usize].clone(), g.ids[o as usize].clone()))
        .collect();
    let type_of = (0..g.ids.len()).map(|i| (g.ids[i].clone(), g.type_names[g.types[i] as usize].clone())).collect();
    let by_name = (0..g.ids.len()).map(|i| (g.names[i].clone(), g.ids[i].clone())).collect();
    Triples { set, type_of, by_name }
}

fn diagnosis_pattern() -> Value {
    json!([{
        "name": "diagnosis",
        "path": ["symptom", "disease", "test"],
        "predicates": ["<presents_symptom", ">diagnosed_by"],
        "mask": 1,
        "templates": ["A patient presents with {0}; {2} is diagnostic. What is the most likely {type}?", "Which {type} presents with {0} and is diagnosed by {2}?"],
    }])
}

#[test]
fn pattern_questions_have_graph_checked_distractors() {
    let (ents, rels) = fixture::graph(3000, 1).unwrap();
    let out = run(&ents, &rels, json!({"questions": 400, "options": 4, "seed": 7, "patterns": diagnosis_pattern()}), 2);
    let qs = from_table(out.table("questions").unwrap(), "?").unwrap();
    assert_eq!(qs.len(), 400);
    let t = triples(&ents, &rels);
    let mut positions = [0usize; 4];
    for q in &qs {
        assert_eq!(q.options.len(), 4);
        // kg_path: symptom, rel, disease, rel, test.
        assert_eq!(q.kg_path.len(), 5, "{:?}", q.kg_path);
        let (symptom, disease, test) = (&q.kg_path[0], &q.kg_path[2], &q.kg_path[4]);
        assert_eq!(t.by_name[q.option_text(&q.answer).unwrap()], *disease);
        assert!(t.set.contains(&(disease.clone(), "presents_symptom".into(), symptom.clone())));
        assert!(t.set.contains(&(disease.clone(), "diagnosed_by".into(), test.clone())));
        // Distractors: diseases, never satisfying both constraints; distinct names.
        let mut names = HashSet::new();
        for c in &q.options {
            assert!(names.insert(c.text.to_lowercase()), "duplicate option in {}", q.id);
            let e = &t.by_name[&c.text];
            assert_eq!(t.type_of[e], "disease");
            if c.label != q.answer {
                let both = t.set.contains(&(e.clone(), "presents_symptom".into(), symptom.clone()))
                    && t.set.contains(&(e.clone(), "diagnosed_by".into(), test.clone()));
                assert!(!both, "distractor {e} is also correct for {}", q.id);
            }
        }
        // Provenance: the two relations and the path's entities.
        assert!(q.parents.contains(&q.kg_path[1]) && q.parents.contains(&q.kg_path[3]) && q.parents.contains(disease));
        assert!(q.question.contains("presents with"));
        positions[(q.answer.as_bytes()[0] - b'A') as usize] += 1;
    }
    assert_eq!(positions, [100, 100, 100, 100], "answer positions are balanced");
    // Several templates are used.
    assert!(
        qs.iter().any(|q| q.question.starts_with("A patient")) && qs.iter().any(|q| q.question.starts_with("Which"))
    );
    // Most distractors share a constraint with the stem (relation-preserving).
    let m = &out.metrics["distractor_tiers"];
    assert!(m["shares_part_of_stem"].as_u64().unwrap() > 600, "{m}");
}

#[test]
fn reproducible_from_the_seed_whatever_the_threads() {
    let (ents, rels) = fixture::graph(2000, 2).unwrap();
    let p = json!({"questions": 300, "seed": 3, "hops": [2, 3]});
    let a = run(&ents, &rels, p.clone(), 1);
    let b = run(&ents, &rels, p.clone(), 2);
    assert_eq!(a.digest("questions").unwrap(), b.digest("questions").unwrap());
    let mut p2 = p.clone();
    p2["seed"] = json!(4);
    let c = run(&ents, &rels, p2, 2);
    assert_ne!(a.digest("questions").unwrap(), c.digest("questions").unwrap());
}

#[test]
fn multi_hop_walks_never_offer_a_correct_distractor() {
    let (ents, rels) = fixture::graph(2000, 5).unwrap();
    let out = run(&ents, &rels, json!({"questions": 300, "seed": 1, "hops": [2, 3], "options": 5}), 2);
    let qs = from_table(out.table("questions").unwrap(), "?").unwrap();
    assert_eq!(qs.len(), 300);
    let t = triples(&ents, &rels);
    let mut hops_seen = HashSet::new();
    for q in &qs {
        let hops = q.kg_path.len() / 2;
        hops_seen.insert(hops);
        assert!((2..=3).contains(&hops));
        // Rebuild the set of entities satisfying the stem by following the relations
        // back from the named far end (through any intermediate entity of the same type).
        let ents_on_path: Vec<&String> = q.kg_path.iter().step_by(2).collect();
        let rel_on_path: Vec<&String> = q.kg_path.iter().skip(1).step_by(2).collect();
        let rel_of: HashMap<&str, (String, String, String)> = {
            let (g, _) = Graph::build(&ents, &rels, 0.0).unwrap();
            rel_on_path
                .iter()
                .map(|r| {
                    let i = g.rel_ids.iter().position(|x| x == *r).unwrap();
                    let (s, o, p) = g.rel_ends[i];
                    (
                        r.as_str(),
                        (g.ids[s as usize].clone(), g.pred_names[p as usize].clone(), g.ids[o as usize].clone()),
                    )
                })
                .collect()
        };
        let mut frontier: HashSet<String> = HashSet::from([ents_on_path[hops].clone()]);
        for h in (0..hops).rev() {
            let (s, p, _) = &rel_of[rel_on_path[h].as_str()];
            let forward = s == ents_on_path[h]; // entity h is the subject
            let want_type = &t.type_of[ents_on_path[h]];
            let mut next = HashSet::new();
            for (a, pp, b) in &t.set {
                if pp != p {
                    continue;
                }
                if forward && frontier.contains(b) && &t.type_of[a] == want_type {
                    next.insert(a.clone());
                }
                if !forward && frontier.contains(a) && &t.type_of[b] == want_type {
                    next.insert(b.clone());
                }
            }
            frontier = next;
        }
        let answer = &t.by_name[q.option_text(&q.answer).unwrap()];
        assert!(frontier.contains(answer));
        for c in q.options.iter().filter(|c| c.label != q.answer) {
            assert!(
                !frontier.contains(&t.by_name[&c.text]),
                "{}: distractor {} satisfies the stem `{}`",
                q.id,
                c.text,
                q.question
            );
        }
        assert!(q.question.contains("the "), "intermediate nodes are described: {}", q.question);
    }
    assert_eq!(hops_seen.len(), 2);
}

#[test]
fn long_tail_weight_favours_rare_answers() {
    let (ents, rels) = fixture::graph(4000, 9).unwrap();
    let flat = run(&ents, &rels, json!({"questions": 500, "long_tail": 0.0, "hops": [1, 2]}), 2);
    let tail = run(&ents, &rels, json!({"questions": 500, "long_tail": 2.0, "hops": [1, 2]}), 2);
    let mean = |o: &HarnessOutput| o.metrics["answer_degree_mean"].as_f64().unwrap();
    assert!(mean(&tail) < mean(&flat) * 0.85, "tail {} vs flat {}", mean(&tail), mean(&flat));
    // The report compares with the graph's distribution.
    let d = tail.table("degrees").unwrap();
    assert!(d.num_rows() >= 3);
    assert!(tail.metrics.contains_key("graph_degree_median"));
}

#[test]
fn kg_model_with_full_knowledge_answers_every_item() {
    let (ents, rels) = fixture::graph(1500, 4).unwrap();
    let out = run(&ents, &rels, json!({"questions": 200, "hops": [1, 3]}), 1);
    let qs = from_table(out.table("questions").unwrap(), "?").unwrap();
    let (g, _) = Graph::build(&ents, &rels, 0.0).unwrap();
    let full = KgModel::new(&g, 1.0, 0);
    assert!(qs.iter().all(|q| full.answer(q, 0).as_deref() == Some(q.answer.as_str())));
    let partial = KgModel::new(&g, 0.3, 0);
    let right = qs.iter().filter(|q| partial.answer(q, 0).as_deref() == Some(q.answer.as_str())).count();
    assert!(right < qs.len() && right > qs.len() / 5, "{right}");
}

#[test]
fn bad_patterns_are_reported() {
    let (ents, rels) = fixture::graph(300, 1).unwrap();
    let err = Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"patterns": [{"name": "x", "path": ["symptom", "disease"], "predicates": [], "mask": 1}]}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("one predicate per hop"), "{err}");
    let err = Harness::new(Arc::new(Sample))
        .input("entities", ents.clone())
        .input("relations", rels.clone())
        .params(json!({"patterns": [{"name": "x", "path": ["symptom", "organ"], "predicates": ["treats"], "mask": 1}]}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("no entity has the type `organ`"), "{err}");
    let (ents, rels) = fixture::graph(300, 1).unwrap();
    let err = Harness::new(Arc::new(Sample))
        .input("entities", ents)
        .input("relations", rels)
        .params(json!({"patterns": [{"name": "backwards", "path": ["symptom", "disease"], "predicates": [">presents_symptom"], "mask": 1}]}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("pattern `backwards` matches no path") && err.contains("direction"), "{err}");
}
