//! Tokenizers: load any HF `tokenizer.json`, or train a byte-level BPE.

use crate::{ModelError, Result, invalid};
use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Special tokens of the Qwen chat format, in the ids a trained tokenizer gives them.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Answer-format markers, added as single (non-special) tokens so decoding keeps them.
pub const FORMAT_TOKENS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// Qwen2's chat template (jinja) written to `tokenizer_config.json`, so
/// transformers' `apply_chat_template` renders what [`crate::chat::render`] renders.
pub const QWEN_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A text tokenizer with the ids the chat format needs.
pub struct TextTokenizer {
    inner: Tokenizer,
}

fn tk_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(invalid!("{}: no such tokenizer file", path.display()));
        }
        let inner =
            Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(TextTokenizer { inner })
    }

    /// Loads `DIR/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Trains a byte-level BPE (GPT-2/Qwen style) on `corpus` with the chat
    /// special tokens and the answer-format tokens added.
    pub fn train_bpe<I, S>(corpus: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = Tokenizer::new(BPE::default());
        tk.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tk.with_decoder(Some(ByteLevel::default()));
        let mut wrapped = tokenizers::models::TrainerWrapper::BpeTrainer(trainer.clone());
        tk.train(&mut wrapped, corpus).map_err(tk_err)?;
        // `trainer` only configured the run; the wrapper holds the trained state.
        let _ = &mut trainer;
        let format: Vec<AddedToken> = FORMAT_TOKENS.iter().map(|t| AddedToken::from(*t, false)).collect();
        tk.add_tokens(&format);
        Ok(TextTokenizer { inner: tk })
    }

    /// Writes `DIR/tokenizer.json` and a `tokenizer_config.json` with the chat template.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let text = self.inner.to_string(true).map_err(tk_err)?;
        crate::io::write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
        let cfg_path = dir.join("tokenizer_config.json");
        if !cfg_path.exists() {
            let mut cfg = serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": QWEN_CHAT_TEMPLATE,
                "model_max_length": 32768,
            });
            if self.token_id("<|im_end|>").is_some() {
                cfg["eos_token"] = "<|im_end|>".into();
            }
            if self.token_id("<|endoftext|>").is_some() {
                cfg["pad_token"] = "<|endoftext|>".into();
            }
            let text = serde_json::to_vec_pretty(&cfg).map_err(|e| ModelError::json("tokenizer_config", e))?;
            crate::io::write_atomic(&cfg_path, &text)?;
        }
        Ok(())
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.inner.encode_fast(text, false).map_err(tk_err)?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`; `skip_special` drops `<|im_end|>` and the like.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().filter(|&&i| i >= 0).map(|&i| i as u32).collect();
        self.inner.decode(&ids, skip_special).map_err(tk_err)
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(|i| i as i64)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids that end an assistant turn: `<|im_end|>` and `<|endoftext|>` when present.
    pub fn stop_ids(&self) -> Vec<i64> {
        ["<|im_end|>", "<|endoftext|>"].iter().filter_map(|t| self.token_id(t)).collect()
    }

    /// The id used for padding (`<|endoftext|>`, else 0); never attended to.
    pub fn pad_id(&self) -> i64 {
        self.token_id("<|endoftext|>").unwrap_or(0)
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
