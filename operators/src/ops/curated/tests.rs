use super::*;
use crate::questions::{from_table, shared_data_dir};
use arrow::array::Array;
use fleming_runtime::Harness;
use fleming_runtime::harness::HarnessOutput;

fn bench(rel: &str) -> PathBuf {
    match shared_data_dir() {
        Ok(d) => d.join("benchmarks").join(rel),
        Err(e) => panic!("{e:#}"),
    }
}

fn run(params: Value) -> HarnessOutput {
    Harness::new(Arc::new(Curated)).params(params).run().unwrap_or_else(|e| panic!("{e:#}"))
}

fn items(out: &HarnessOutput) -> Vec<Question> {
    from_table(out.table("questions").unwrap(), "?").unwrap()
}

fn reasons(out: &HarnessOutput) -> Vec<String> {
    let b = out.table("rejects").unwrap().concat().unwrap();
    let c = b.column_by_name("reason").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
    (0..c.len()).map(|i| c.value(i).to_string()).collect()
}

fn check_all_valid(qs: &[Question]) {
    let mut ids = std::collections::HashSet::new();
    for q in qs {
        assert!(ids.insert(q.id.clone()), "duplicate id {}", q.id);
        assert!(!q.question.is_empty(), "{}", q.id);
        for a in q.answers() {
            assert!(q.option_text(a).is_some(), "{}: answer {a} not among options", q.id);
        }
    }
}

#[test]
fn medqa_real_file() {
    let out = run(json!({"format": "medqa", "path": bench("medqa-us/phrases_no_exclude_test.jsonl")}));
    let qs = items(&out);
    assert_eq!(qs.len(), 1273, "rejects: {:?}", reasons(&out));
    assert_eq!(out.table("rejects").unwrap().num_rows(), 0);
    check_all_valid(&qs);
    assert!(qs.iter().all(|q| q.options.len() == 4 && q.language == "en" && q.source == "medqa"));
    assert!(qs[0].meta.as_deref().unwrap_or("").contains("step"));
}

#[test]
fn medmcqa_real_file_cop_is_one_based() {
    let out = run(json!({"format": "medmcqa", "path": bench("medmcqa/dev.json")}));
    let qs = items(&out);
    assert_eq!(qs.len(), 4183, "rejects: {:?}", reasons(&out));
    check_all_valid(&qs);
    // The first record: cop 1 -> A.
    let first = qs.iter().find(|q| q.id == "medmcqa-45258d3d-b974-44dd-a161-c3fccbdadd88").unwrap();
    assert_eq!(first.answer, "A");
    assert_eq!(first.subject.as_deref(), Some("Physiology"));
    let mut hist = [0usize; 4];
    for q in &qs {
        hist[(q.answer.as_bytes()[0] - b'A') as usize] += 1;
    }
    assert!(hist.iter().all(|&n| n > 500), "answers spread over A-D: {hist:?}");
}

#[test]
fn pubmedqa_labelled_and_test_half_with_answer_key() {
    let out = run(json!({"format": "pubmedqa", "path": bench("pubmedqa/ori_pqal.json")}));
    let qs = items(&out);
    assert_eq!(qs.len(), 1000, "rejects: {:?}", reasons(&out));
    check_all_valid(&qs);
    assert!(qs.iter().all(|q| q.options.iter().map(|c| c.text.as_str()).collect::<Vec<_>>() == ["yes", "no", "maybe"]));
    assert!(qs.iter().all(|q| q.context.as_deref().is_some_and(|c| c.len() > 100)));
    assert!(qs[0].id.starts_with("pubmedqa-"));
    let out = run(json!({
        "format": "pubmedqa", "path": bench("pubmedqa/test_set.json"),
        "answers": bench("pubmedqa/test_ground_truth.json"),
    }));
    let qs = items(&out);
    assert_eq!(qs.len(), 500, "rejects: {:?}", reasons(&out));
    let key: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(bench("pubmedqa/test_ground_truth.json")).unwrap()).unwrap();
    for q in &qs {
        let pmid = q.id.trim_start_matches("pubmedqa-");
        assert_eq!(q.option_text(&q.answer), Some(key[pmid].as_str()), "{pmid}");
    }
}

#[test]
fn pubmedqa_answer_key_missing_a_pmid_rejects_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.json"),
        r#"{"1": {"QUESTION": "q?", "CONTEXTS": ["c"]}, "2": {"QUESTION": "r?", "CONTEXTS": ["d"]}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("k.json"), r#"{"1": "maybe"}"#).unwrap();
    let out =
        run(json!({"format": "pubmedqa", "path": dir.path().join("t.json"), "answers": dir.path().join("k.json")}));
    assert_eq!(items(&out)[0].answer, "C");
    assert_eq!(reasons(&out), vec!["PMID 2 is not in the answer key"]);
}

#[test]
fn mmlu_directory_without_header() {
    let out = run(json!({"format": "mmlu", "path": bench("mmlu-medical")}));
    let qs = items(&out);
    assert_eq!(qs.len(), 1089, "rejects: {:?}", reasons(&out));
    check_all_valid(&qs);
    let subjects: std::collections::BTreeSet<&str> = qs.iter().filter_map(|q| q.subject.as_deref()).collect();
    assert_eq!(subjects.len(), 6, "{subjects:?}");
    assert!(subjects.contains("professional_medicine"));
    // Quoted newlines survive.
    assert!(qs.iter().any(|q| q.question.contains('\n')));
}

#[test]
fn mmlu_pro_up_to_ten_options() {
    for (file, n) in [("mmlu-pro/biology_test.jsonl", 717), ("mmlu-pro/health_test.jsonl", 818)] {
        let out = run(json!({"format": "mmlu-pro", "path": bench(file)}));
        let qs = items(&out);
        assert_eq!(qs.len(), n, "{file}: rejects: {:?}", reasons(&out));
        check_all_valid(&qs);
        assert!(qs.iter().all(|q| (3..=10).contains(&q.options.len())));
        assert!(qs.iter().any(|q| q.options.len() == 10));
    }
}

#[test]
fn cmexam_gzipped_multi_answers_kept_as_sets() {
    let out = run(json!({"format": "cmexam", "path": bench("cmexam/val.jsonl.gz")}));
    let qs = items(&out);
    // One record has no answer (`"Answer": "nan"`): rejected with the reason, not dropped.
    assert_eq!(reasons(&out), vec!["answer `nan` names no option (options: A, B, C, D, E)"]);
    assert_eq!(qs.len(), 6810);
    check_all_valid(&qs);
    assert!(qs.iter().all(|q| q.language == "zh"));
    let multi: Vec<&Question> = qs.iter().filter(|q| q.multi_answer).collect();
    assert_eq!(multi.len(), 96 + 61 + 35 + 18, "3-, 4-, 2- and 5-letter answers (the `nan` record is not one)");
    assert!(multi.iter().any(|q| q.answer == "A,B,C,D"), "sets are kept whole");
    assert_eq!(out.metrics["multi_answer"], json!(210));
    assert_eq!(qs[0].options[1].text, "出血部位");
    // A few items start at option B; labels are kept as written.
    assert!(qs.iter().any(|q| q.options[0].label == "B" && q.answer == "C"));
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn mapping_medxpertqa_options_map_letter_answer() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "medxpertqa.jsonl",
        concat!(
            r#"{"id": "MM-1", "question": "Which nerve?", "options": {"A": "Ulnar", "B": "Radial", "C": "Median", "D": "Axillary", "E": "Musculocutaneous"}, "label": "C", "medical_task": "Diagnosis"}"#,
            "\n",
            r#"{"id": "MM-2", "question": "Which drug?", "options": {"A": "x", "B": "y"}, "label": "F", "medical_task": "Treatment"}"#,
            "\n"
        ),
    );
    let out = run(json!({"format": "mapping", "path": p, "source": "medxpertqa",
        "mapping": {"id": "id", "question": "question", "options": "options", "answer": "label", "subject": "medical_task"}}));
    let qs = items(&out);
    assert_eq!(qs.len(), 1);
    assert_eq!((qs[0].id.as_str(), qs[0].answer.as_str(), qs[0].options.len()), ("medxpertqa-MM-1", "C", 5));
    assert_eq!(qs[0].subject.as_deref(), Some("Diagnosis"));
    assert_eq!(reasons(&out), vec!["answer `F` matches no option"]);
}

#[test]
fn mapping_medbullets_csv_option_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "medbullets_op5.csv",
        "question,answer,opa,opb,opc,opd,ope,answer_idx,explanation\n\"A 45-year-old, with \"\"pain\"\"\nWhat next?\",CT scan,MRI,CT scan,X-ray,Biopsy,Observe,B,Because.\n",
    );
    let out = run(json!({"format": "mapping", "path": p, "source": "medbullets",
        "mapping": {"question": "question", "option_fields": ["opa", "opb", "opc", "opd", "ope"], "answer": "answer_idx", "answer_type": "letter", "explanation": "explanation"}}));
    let qs = items(&out);
    assert_eq!(qs.len(), 1, "{:?}", reasons(&out));
    assert_eq!(qs[0].answer, "B");
    assert_eq!(qs[0].options[4].text, "Observe");
    assert!(qs[0].question.contains("\"pain\"\nWhat next?"));
    // The same file, answer given as the option's text.
    let out = run(json!({"format": "mapping", "path": p,
        "mapping": {"question": "question", "option_fields": ["opa", "opb", "opc", "opd", "ope"], "answer": "answer", "answer_type": "text"}}));
    assert_eq!(items(&out)[0].answer, "B");
}

#[test]
fn mapping_careqa_one_based_index_and_json_array() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "careqa.json",
        r#"[{"exam_id": 1, "question": "Q1?", "op1": "a", "op2": "b", "op3": "c", "op4": "d", "cop": 4, "year": 2020, "category": "Medicine", "unique_id": "u1"},
            {"exam_id": 1, "question": "Q2?", "op1": "a", "op2": "b", "op3": "c", "op4": "d", "cop": 0, "year": 2020, "category": "Medicine", "unique_id": "u2"}]"#,
    );
    let out = run(json!({"format": "mapping", "path": p, "source": "careqa",
        "mapping": {"id": "unique_id", "question": "question", "option_fields": ["op1", "op2", "op3", "op4"], "answer": "cop", "answer_type": "index", "index_base": 1, "subject": "category"}}));
    let qs = items(&out);
    assert_eq!((qs.len(), qs[0].answer.as_str(), qs[0].id.as_str()), (1, "D", "careqa-u1"));
    assert_eq!(reasons(&out), vec!["answer index 0 is outside the 4 options (1-based)"]);
}

#[test]
fn mapping_jmed_list_of_objects_nested_records_one_element_list_answer() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "jmed.json",
        r#"{"data": [{"qid": 7, "case": {"text": "Patient with fever."}, "choices": [{"key": "A", "value": "Flu"}, {"key": "B", "value": "Cold"}, {"key": "C", "value": "Sepsis"}], "gold": ["Sepsis"]},
                     {"qid": 8, "case": {"text": "Second."}, "choices": [{"key": "A", "value": "x"}, {"key": "B", "value": "y"}], "gold": [1]}]}"#,
    );
    let out = run(json!({"format": "mapping", "path": p, "source": "jmed",
        "mapping": {"records": "data", "id": "qid", "question": "case.text", "options": "choices", "option_label": "key", "option_text": "value", "answer": "gold"}}));
    let qs = items(&out);
    assert_eq!(qs.len(), 2, "{:?}", reasons(&out));
    assert_eq!((qs[0].id.as_str(), qs[0].answer.as_str()), ("jmed-7", "C"));
    // A bare number in `auto` is a 0-based index.
    assert_eq!(qs[1].answer, "B");
    // Options as a list of texts, answer as a 0-based index.
    let p = write(dir.path(), "l.jsonl", "{\"q\": \"Which?\", \"o\": [\"x\", \"y\", \"z\"], \"a\": 2}\n");
    let out = run(json!({"format": "mapping", "path": p, "mapping": {"question": "q", "options": "o", "answer": "a"}}));
    assert_eq!(items(&out)[0].answer, "C");
}

#[test]
fn parameter_checks() {
    let err = Harness::new(Arc::new(Curated))
        .params(json!({"format": "mapping", "path": "x.jsonl"}))
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs `mapping:`"), "{err}");
    let err = Harness::new(Arc::new(Curated))
        .params(
            json!({"format": "medqa", "path": "x.jsonl", "mapping": {"question": "q", "answer": "a", "options": "o"}}),
        )
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("only read with `format: mapping`"), "{err}");
}

#[test]
fn malformed_records_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let line = r#"{"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "x"}"#;
    let p = write(
        dir.path(),
        "m.jsonl",
        &format!(
            "{line}\n{{broken\n{line}\n{{\"question\": \"R?\", \"options\": {{\"A\": \"x\"}}, \"answer_idx\": \"A\"}}\n"
        ),
    );
    let out = run(json!({"format": "medqa", "path": p}));
    let qs = items(&out);
    assert_eq!(qs.len(), 2);
    assert_eq!(
        qs[1].id,
        format!("{}~2", qs[0].id),
        "exact duplicates are kept with distinct ids; validate removes them"
    );
    let r = reasons(&out);
    assert!(r[0].starts_with("malformed JSON"), "{r:?}");
    assert_eq!(r[1], "1 option(s); a question needs at least 2");
}
