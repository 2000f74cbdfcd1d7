//! The `metadata_props` of an ONNX file, read straight from its protobuf bytes. PP-OCR's
//! recognition models carry their character list there (key `character`), and rten does not
//! expose it. ModelProto keeps metadata in field 14, a repeated {key = 1, value = 2} message;
//! every other field is skipped by its length, so the 10 MB graph costs nothing to pass.

use anyhow::{bail, Context, Result};

fn varint(bytes: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*pos) else { bail!("truncated varint at byte {}", *pos) };
        *pos += 1;
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint longer than 10 bytes at byte {}", *pos)
}

/// Walks one message's fields: calls `each(field, bytes)` for length-delimited fields and skips
/// the rest.
fn fields(bytes: &[u8], mut each: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
    let mut pos = 0;
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(bytes, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = varint(bytes, &mut pos)? as usize;
                let end = pos.checked_add(len).filter(|&e| e <= bytes.len());
                let Some(end) = end else { bail!("field {field} runs past the end of the file (byte {pos})") };
                each(field, &bytes[pos..end])?;
                pos = end;
            }
            _ => bail!("unknown protobuf wire type {wire} at byte {pos}; not an ONNX file?"),
        }
    }
    Ok(())
}

/// All `metadata_props` entries of an ONNX model, in file order.
pub fn metadata(model: &[u8]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    fields(model, |field, body| {
        if field == 14 {
            let (mut key, mut value) = (String::new(), String::new());
            fields(body, |f, b| {
                let s = String::from_utf8(b.to_vec()).context("metadata is not UTF-8")?;
                match f {
                    1 => key = s,
                    2 => value = s,
                    _ => {}
                }
                Ok(())
            })?;
            out.push((key, value));
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(field: u64, body: &[u8]) -> Vec<u8> {
        let mut out = vec![((field << 3) | 2) as u8, body.len() as u8];
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_metadata_and_skips_other_fields() {
        let mut model = vec![0x08, 0x07]; // ir_version = 7
        model.extend(len_field(7, b"graph bytes that are skipped"));
        let mut entry = len_field(1, b"character");
        entry.extend(len_field(2, "a\nb\n中".as_bytes()));
        model.extend(len_field(14, &entry));
        let meta = metadata(&model).unwrap();
        assert_eq!(meta, vec![("character".to_string(), "a\nb\n中".to_string())]);
        // A length that runs past the end is an error, not a panic.
        let mut cut = model.clone();
        cut.truncate(model.len() - 3);
        assert!(metadata(&cut).is_err());
    }
}
