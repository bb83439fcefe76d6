//! Files: atomic writes and the safetensors format (single and sharded).
//!
//! The reader is our own rather than the `safetensors` crate's because it streams
//! one tensor at a time from the file: the peak memory of a load is the weights
//! plus the largest single tensor, not twice the checkpoint.

use crate::{ModelError, Result, invalid};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(|e| ModelError::io(path, e)))
}

/// Like [`write_atomic`] with a writer callback, for streamed content.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    fill(&mut f)?;
    f.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    Ok(())
}

/// Maps a safetensors dtype string to a torch kind.
pub fn kind_from_st(dtype: &str) -> Result<Kind> {
    Ok(match dtype {
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        other => return Err(invalid!("unsupported safetensors dtype {other}")),
    })
}

/// Maps a torch kind to its safetensors dtype string.
pub fn st_from_kind(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        other => return Err(invalid!("cannot store {other:?} in safetensors")),
    })
}

/// Where one tensor lives inside a safetensors file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Storage kind in the file.
    pub kind: Kind,
    /// Shape.
    pub shape: Vec<i64>,
    /// Absolute byte range in the file.
    pub start: u64,
    /// End of the byte range (exclusive).
    pub end: u64,
}

/// An open safetensors file whose tensors are read on demand.
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl SafetensorsFile {
    /// Opens a file and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| ModelError::io(&path, e))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100_000_000 || header_len + 8 > file_len {
            return Err(invalid!("{}: not a safetensors file (header length {header_len})", path.display()));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| ModelError::io(&path, e))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| ModelError::json(format!("{} header", path.display()), e))?;
        let base = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let bad = || invalid!("{}: malformed entry for {name}", path.display());
            let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)?;
            let shape = v
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(bad)?
                .iter()
                .map(|d| d.as_i64().ok_or_else(bad))
                .collect::<Result<Vec<_>>>()?;
            let offs = v.get("data_offsets").and_then(|s| s.as_array()).ok_or_else(bad)?;
            let (Some(a), Some(b)) = (offs.first().and_then(|x| x.as_u64()), offs.get(1).and_then(|x| x.as_u64()))
            else {
                return Err(bad());
            };
            let kind = kind_from_st(dtype)?;
            let numel: i64 = shape.iter().product();
            if b < a || base + b > file_len || (b - a) as usize != numel as usize * kind.elt_size_in_bytes() {
                return Err(invalid!("{}: byte range of {name} is inconsistent", path.display()));
            }
            tensors.insert(name, TensorInfo { kind, shape, start: base + a, end: base + b });
        }
        Ok(SafetensorsFile { path, file, tensors })
    }

    /// Reads one tensor into CPU memory in its stored kind.
    pub fn read(&mut self, name: &str) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| invalid!("{}: no tensor {name}", self.path.display()))?.clone();
        let n = (info.end - info.start) as usize;
        let t = Tensor::f_empty(&info.shape, (info.kind, Device::Cpu))?;
        if n == 0 {
            return Ok(t);
        }
        self.file.seek(SeekFrom::Start(info.start)).map_err(|e| ModelError::io(&self.path, e))?;
        // Read straight into the tensor's storage: no second copy of the bytes,
        // which keeps a load's peak memory at the weights' size.
        // SAFETY: `t` is a fresh, contiguous CPU tensor of exactly `n` bytes
        // (checked against shape and kind in `open`), owned by this function.
        let dst = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, n) };
        self.file.read_exact(dst).map_err(|e| ModelError::io(&self.path, e))?;
        Ok(t)
    }
}

/// The files of a checkpoint directory: one `model.safetensors` or the shards
/// named by `model.safetensors.index.json`; `(tensor name → file)`.
pub fn checkpoint_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let mut out = BTreeMap::new();
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::json(index.display().to_string(), e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid!("{}: no weight_map", index.display()))?;
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| invalid!("{}: bad entry {name}", index.display()))?;
            if file.contains('/') || file.contains("..") {
                return Err(invalid!("{}: shard name {file:?} leaves the directory", index.display()));
            }
            out.insert(name.clone(), dir.join(file));
        }
    } else if single.exists() {
        let f = SafetensorsFile::open(&single)?;
        for name in f.tensors.keys() {
            out.insert(name.clone(), single.clone());
        }
    } else {
        return Err(invalid!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display()));
    }
    Ok(out)
}

/// Reads named tensors from a checkpoint directory, one at a time, handing each
/// to `sink` converted to `kind` on `device` so only one raw buffer is alive.
pub fn read_checkpoint(
    dir: &Path,
    kind: Kind,
    device: Device,
    mut sink: impl FnMut(&str, Tensor) -> Result<()>,
) -> Result<()> {
    let files = checkpoint_files(dir)?;
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, file) in files {
        by_file.entry(file).or_default().push(name);
    }
    for (file, names) in by_file {
        let mut f = SafetensorsFile::open(&file)?;
        for name in names {
            let t = f.read(&name)?;
            let t =
                if t.kind() == kind && device == Device::Cpu { t } else { t.f_to_device(device)?.f_to_kind(kind)? };
            sink(&name, t)?;
        }
    }
    Ok(())
}

/// Writes tensors as one safetensors file (atomically), streaming each tensor.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut header = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> =
        metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0u64;
    for (name, t) in tensors {
        let kind = t.kind();
        let bytes = t.numel() as u64 * kind.elt_size_in_bytes() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": st_from_kind(kind)?, "shape": t.size(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut hbytes = serde_json::to_vec(&header).map_err(|e| ModelError::json("safetensors header", e))?;
    // Pad so tensor data starts 8-byte aligned, as the reference writer does.
    while (hbytes.len() + 8) % 8 != 0 {
        hbytes.push(b' ');
    }
    write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let err = |e| ModelError::io(path, e);
        w.write_all(&(hbytes.len() as u64).to_le_bytes()).map_err(err)?;
        w.write_all(&hbytes).map_err(err)?;
        for (_, t) in tensors {
            let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
            let n = t.numel();
            let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut buf, n)?;
            w.write_all(&buf).map_err(err)?;
        }
        w.flush().map_err(err)?;
        Ok(())
    })
}

/// Writes a checkpoint as `model.safetensors`, or as shards of at most
/// `max_shard_bytes` with `model.safetensors.index.json` when it is larger.
pub fn write_checkpoint(dir: &Path, tensors: &[(String, Tensor)], max_shard_bytes: Option<u64>) -> Result<()> {
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let size = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
    let total: u64 = tensors.iter().map(|(_, t)| size(t)).sum();
    let limit = max_shard_bytes.unwrap_or(u64::MAX);
    if total <= limit {
        let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
        return write_safetensors(&dir.join("model.safetensors"), tensors, &meta);
    }
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut cur = 0u64;
    for (name, t) in tensors {
        let last_empty = shards.last().is_none_or(|s| s.is_empty());
        if cur + size(t) > limit && !last_empty {
            shards.push(vec![]);
            cur = 0;
        }
        cur += size(t);
        if let Some(s) = shards.last_mut() {
            s.push((name.clone(), t.shallow_clone()));
        }
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_safetensors(&dir.join(&file), shard, &meta)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let _ = std::fs::remove_file(dir.join("model.safetensors"));
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let text = serde_json::to_vec_pretty(&index).map_err(|e| ModelError::json("index", e))?;
    write_atomic(&dir.join("model.safetensors.index.json"), &text)
}
