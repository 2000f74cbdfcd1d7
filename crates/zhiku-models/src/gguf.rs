//! GGUF files (llama.cpp's model format): header, metadata and tensor directory, read from a
//! memory map (or, when asked, from the file read into memory). Tensor data is never copied
//! again: a [`GgufTensor`] points into the file's bytes, and the kernels in `qmatmul` read the
//! quantised blocks where they lie.
//!
//! Every problem is reported with the byte offset where it was found, and a tensor whose data
//! runs past the end of the file (a truncated download) is named.

use crate::blocks::GgmlType;
use crate::byte_reader::ByteReader;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's entry in the directory: its shape in GGUF order (`dims[0]` is the row length,
/// the fastest-varying dimension) and where its bytes lie in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }
    /// `(rows, row_len)` of the tensor seen as a matrix (row length = `dims[0]`).
    pub fn matrix_shape(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.elem_count() / cols.max(1), cols)
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<FileBytes>,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

/// A tensor's bytes inside the shared map, with its directory entry.
#[derive(Clone)]
pub struct GgufTensor {
    map: Arc<FileBytes>,
    pub info: TensorInfo,
}

impl GgufTensor {
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.info.offset..self.info.offset + self.info.size]
    }
    /// All elements as f32 (dequantised), in file order.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.info.elem_count()];
        self.info.dtype.dequantize(self.bytes(), &mut out).with_context(|| format!("tensor '{}'", self.info.name))?;
        Ok(out)
    }
}

/// A file's bytes: memory-mapped (the default: nothing is copied and the page cache is shared
/// between processes), or read into memory (`--no-mmap`; on some machines the kernels stream
/// weights faster from anonymous memory, see docs/benchmarks.md).
enum FileBytes {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Read(v) => v,
        }
    }
}

impl GgufFile {
    /// Maps the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, true)
    }

    /// Maps the file (`mmap`), or reads it into memory.
    pub fn open_with(path: &Path, mmap: bool) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let map = if mmap {
            // SAFETY: the map is read-only; a model file changed underneath a running process is
            // outside what we can guard against (llama.cpp makes the same trade).
            FileBytes::Mapped(unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?)
        } else {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
            FileBytes::Read(bytes)
        };
        let map = Arc::new(map);
        Self::parse(path, map).with_context(|| format!("{} is not a readable GGUF file", path.display()))
    }

    fn parse(path: &Path, map: Arc<FileBytes>) -> Result<Self> {
        let mut r = ByteReader::new(&map);
        let magic = r.take(4)?;
        if magic != MAGIC {
            bail!("bad magic {:?} at byte 0 (expected \"GGUF\")", String::from_utf8_lossy(magic))
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (2 and 3 are)")
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        // Each entry takes at least 8 bytes: counts beyond the file size are corruption.
        if tensor_count > map.len() as u64 / 8 || kv_count > map.len() as u64 / 8 {
            bail!("header claims {tensor_count} tensors and {kv_count} metadata entries, more than a {}-byte file can hold", map.len())
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let at = r.pos;
            let key = r.string().with_context(|| format!("metadata key at byte {at}"))?;
            let ty = r.u32()?;
            let value = r.value(ty).with_context(|| format!("metadata '{key}' at byte {at}"))?;
            metadata.insert(key, value);
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            bail!("general.alignment {alignment} is not a power of two")
        }
        let mut raw = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let at = r.pos;
            let name = r.string().with_context(|| format!("tensor name at byte {at}"))?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                bail!("tensor '{name}' (entry at byte {at}) has {n_dims} dimensions (1 to 4 expected)")
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64()?;
                if d == 0 || d > 1 << 40 {
                    bail!("tensor '{name}' (entry at byte {at}) has dimension {d}")
                }
                dims.push(d as usize);
            }
            let type_id = r.u32()?;
            let dtype = GgmlType::from_id(type_id).with_context(|| format!("tensor '{name}' (entry at byte {at})"))?;
            let offset = r.u64()?;
            raw.push((name, dims, dtype, offset, at));
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut by_name = BTreeMap::new();
        for (name, dims, dtype, rel, at) in raw {
            let elems: usize = dims.iter().product();
            if dims[0] % dtype.block_len() != 0 {
                bail!("tensor '{name}': row length {} is not a multiple of {}'s block of {}", dims[0], dtype.name(), dtype.block_len())
            }
            let size = elems / dtype.block_len() * dtype.block_bytes();
            let offset = data_start + rel;
            let end = offset.checked_add(size as u64).ok_or_else(|| anyhow!("tensor '{name}': offset overflows"))?;
            if end > map.len() as u64 {
                bail!(
                    "tensor '{name}' ({} {:?}) needs bytes {offset}..{end} but the file ends at byte {}: the file is truncated",
                    dtype.name(),
                    dims,
                    map.len()
                )
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                bail!("tensor '{name}' appears twice (second entry at byte {at})")
            }
            tensors.push(TensorInfo { name, dims, dtype, offset: offset as usize, size });
        }
        Ok(Self { path: path.to_path_buf(), map, version, metadata, tensors, by_name })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn file_size(&self) -> usize {
        self.map.len()
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn has_tensor(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
    pub fn tensor(&self, name: &str) -> Result<GgufTensor> {
        let i = *self.by_name.get(name).ok_or_else(|| anyhow!("{} has no tensor '{name}'", self.path.display()))?;
        Ok(GgufTensor { map: self.map.clone(), info: self.tensors[i].clone() })
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key).ok_or_else(|| anyhow!("{} lacks metadata '{key}' (an integer)", self.path.display()))
    }
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture").ok_or_else(|| anyhow!("{} lacks metadata 'general.architecture'", self.path.display()))
    }
    /// Strings of an array entry (token lists, merges).
    pub fn string_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(Value::as_str).collect()
    }
}

/// GGUF's strings and metadata values over the shared cursor.
impl ByteReader<'_> {
    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let len = self.u64()?;
        if len > self.bytes.len() as u64 {
            bail!("string length {len} at byte {at} exceeds the file")
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| anyhow!("string at byte {at} is not UTF-8"))
    }
    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let at = self.pos;
                let item = self.u32()?;
                let len = self.u64()?;
                if item == 9 {
                    bail!("nested arrays (at byte {at}) are not supported")
                }
                if len > self.bytes.len() as u64 {
                    bail!("array length {len} at byte {at} exceeds the file")
                }
                let mut v = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    v.push(self.value(item)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown metadata value type {other} at byte {}", self.pos - 4),
        })
    }
}

/// Writes GGUF files (tests and tools: tiny models, fixtures). Tensors are given as raw bytes
/// of their type.
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self { metadata: Vec::new(), tensors: Vec::new() }
    }
    pub fn meta(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }
    /// `dims` in GGUF order (row length first).
    pub fn tensor(&mut self, name: &str, dims: &[usize], dtype: GgmlType, bytes: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims.to_vec(), dtype, bytes));
        self
    }
    pub fn f32_tensor(&mut self, name: &str, dims: &[usize], values: &[f32]) -> &mut Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, bytes)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let infos: Vec<TensorEntry> = self.tensors.iter().map(|(n, d, t, b)| TensorEntry { name: n.clone(), dims: d.clone(), dtype: *t, len: b.len() }).collect();
        let (mut out, offsets) = header(&self.metadata, &infos);
        let start = out.len();
        for ((_, _, _, bytes), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off as usize, 0);
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Writes to `path` through a temporary file and a rename (never a half-written file).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("gguf.partial");
        std::fs::write(&tmp, self.to_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
    }

    /// Writes a file whose tensors are made one at a time by `data(i)` (the bytes of
    /// `tensors[i]`, exactly `tensors[i].len` of them) and written straight out, so a large
    /// model never sits in memory whole (the writer's own tensors are ignored). Through a
    /// temporary file and a rename, as [`GgufWriter::write`].
    pub fn write_streaming(&self, path: &Path, tensors: &[TensorEntry], data: &mut dyn FnMut(usize) -> Result<Vec<u8>>) -> Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("gguf.partial");
        let result = (|| -> Result<()> {
            let (head, offsets) = header(&self.metadata, tensors);
            let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            f.write_all(&head)?;
            let mut at = 0u64;
            for (i, (info, off)) in tensors.iter().zip(offsets).enumerate() {
                f.write_all(&vec![0u8; (off - at) as usize])?;
                let bytes = data(i)?;
                if bytes.len() != info.len {
                    bail!("tensor '{}' has {} bytes, {} were declared", info.name, bytes.len(), info.len)
                }
                f.write_all(&bytes)?;
                at = off + bytes.len() as u64;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {}", tmp.display())));
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
    }
}

/// A tensor of a file [`GgufWriter::write_streaming`] writes: `dims` in GGUF order (row length
/// first), `len` its bytes.
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
    pub len: usize,
}

/// The file's header up to the aligned start of the tensor data, and each tensor's offset
/// from that start.
fn header(metadata: &[(String, Value)], tensors: &[TensorEntry]) -> (Vec<u8>, Vec<u64>) {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        put_value(&mut out, v, true);
    }
    let mut rel = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.dtype.id().to_le_bytes());
        out.extend_from_slice(&rel.to_le_bytes());
        offsets.push(rel);
        rel = (rel + t.len as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    let start = out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize;
    out.resize(start, 0);
    (out, offsets)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value, with_type: bool) {
    if with_type {
        out.extend_from_slice(&value_type(v).to_le_bytes());
    }
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            let item_type = items.first().map(value_type).unwrap_or(4);
            out.extend_from_slice(&item_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Value::String("llama".into()))
            .meta("llama.block_count", Value::U32(2))
            .meta("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("b".into())]))
            .f32_tensor("first", &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])
            .f32_tensor("second", &[3], &[9., 10., 11.]);
        w.to_bytes()
    }

    fn open_bytes(bytes: &[u8]) -> Result<GgufFile> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        GgufFile::open(&p)
    }

    #[test]
    fn round_trips_metadata_and_tensors() {
        let f = open_bytes(&sample()).unwrap();
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.require_u64("llama.block_count").unwrap(), 2);
        assert_eq!(f.string_array("tokenizer.ggml.tokens").unwrap(), vec!["a", "b"]);
        let t = f.tensor("first").unwrap();
        assert_eq!(t.info.matrix_shape(), (2, 4));
        assert_eq!(t.to_f32().unwrap(), vec![1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(f.tensor("second").unwrap().to_f32().unwrap(), vec![9., 10., 11.]);
        assert_eq!(f.tensor("second").unwrap().info.offset % 32, 0);
    }

    #[test]
    fn streaming_writes_the_same_bytes_and_checks_each_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Value::String("llama".into()))
            .meta("llama.block_count", Value::U32(2))
            .meta("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("b".into())]));
        let data: [Vec<f32>; 2] = [vec![1., 2., 3., 4., 5., 6., 7., 8.], vec![9., 10., 11.]];
        let bytes = |v: &Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let infos = [("first", vec![4, 2]), ("second", vec![3])].map(|(n, d)| TensorEntry { name: n.into(), len: 4 * d.iter().product::<usize>(), dims: d, dtype: GgmlType::F32 });
        let p = dir.path().join("m.gguf");
        w.write_streaming(&p, &infos, &mut |i| Ok(bytes(&data[i]))).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), sample());
        // A tensor of the wrong size fails, leaving neither the file nor its temporary.
        let q = dir.path().join("bad.gguf");
        let err = w.write_streaming(&q, &infos, &mut |i| Ok(bytes(&data[i])[..4].to_vec())).unwrap_err();
        assert!(format!("{err:#}").contains("'first' has 4 bytes, 32 were declared"), "{err:#}");
        assert!(!q.exists() && !q.with_extension("gguf.partial").exists());
    }

    #[test]
    fn truncated_file_names_the_tensor_and_offsets() {
        let b = sample();
        let err = format!("{:#}", open_bytes(&b[..b.len() - 4]).err().unwrap());
        assert!(err.contains("tensor 'second'") && err.contains("truncated"), "{err}");
        let err = format!("{:#}", open_bytes(&b[..60]).err().unwrap());
        assert!(err.contains("at byte"), "{err}");
    }

    #[test]
    fn corrupt_header_and_unknown_type_are_named() {
        let mut b = sample();
        b[0] = b'X';
        assert!(format!("{:#}", open_bytes(&b).err().unwrap()).contains("bad magic"));
        // Type id of the first tensor: find its name and patch the id after the dims.
        let b = sample();
        let pos = b.windows(5).position(|w| w == b"first").unwrap() + 5 + 4 + 16;
        let mut c = b.clone();
        c[pos..pos + 4].copy_from_slice(&99u32.to_le_bytes());
        let err = format!("{:#}", open_bytes(&c).err().unwrap());
        assert!(err.contains("'first'") && err.contains("99"), "{err}");
    }
}
