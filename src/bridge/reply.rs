//! Redis stream replies read from `redis::Value` by hand: field names and values are bytes,
//! so that one entry another producer wrote with a field name that is not UTF-8 is one
//! malformed entry, not a reply that fails to parse (which would leave the whole batch
//! pending with this consumer, and fail every claim of it after: a poison pill).

use redis::Value;

use super::BridgeError;

/// One entry of a stream reply: its id, and its fields (`None`: the entry was deleted or
/// trimmed while pending, and Redis sent its id alone).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Vec<u8>, Value)>>,
}

/// The entries of an `XREADGROUP` reply on one stream (nil: none before the block ended).
pub(crate) fn read_group(reply: Value) -> Result<Vec<Entry>, BridgeError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        // RESP3 answers with a map of stream to entries.
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err(shape("XREADGROUP")),
    };
    let mut all = Vec::new();
    for stream in streams {
        let entries = match stream {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            entries @ Value::Array(_) => Some(entries),
            _ => None,
        };
        all.extend(entries_of(entries.ok_or_else(|| shape("XREADGROUP"))?)?);
    }
    Ok(all)
}

/// An `XAUTOCLAIM` reply: the cursor of the next scan, the entries claimed, and the ids of
/// entries that were pending but no longer exist (as entries without fields).
pub(crate) fn auto_claim(reply: Value) -> Result<(String, Vec<Entry>), BridgeError> {
    let Value::Array(parts) = reply else {
        return Err(shape("XAUTOCLAIM"));
    };
    let mut parts = parts.into_iter();
    let cursor = parts
        .next()
        .and_then(text)
        .ok_or_else(|| shape("XAUTOCLAIM"))?;
    let mut entries = entries_of(parts.next().ok_or_else(|| shape("XAUTOCLAIM"))?)?;
    if let Some(Value::Array(deleted)) = parts.next() {
        for id in deleted {
            let id = text(id).ok_or_else(|| shape("XAUTOCLAIM"))?;
            entries.push(Entry { id, fields: None });
        }
    }
    Ok((cursor, entries))
}

/// A list of `[id, [field, value, ...] | nil]` entries.
fn entries_of(value: Value) -> Result<Vec<Entry>, BridgeError> {
    let Value::Array(entries) = value else {
        return Err(shape("stream entries"));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err(shape("stream entry"));
            };
            let mut parts = parts.into_iter();
            let id = parts
                .next()
                .and_then(text)
                .ok_or_else(|| shape("stream entry"))?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(Value::Array(flat)) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        fields.push((bytes(name).unwrap_or_default(), value));
                    }
                    Some(fields)
                }
                Some(Value::Map(pairs)) => Some(
                    pairs
                        .into_iter()
                        .map(|(name, value)| (bytes(name).unwrap_or_default(), value))
                        .collect(),
                ),
                Some(_) => return Err(shape("stream entry")),
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

fn text(value: Value) -> Option<String> {
    String::from_utf8(bytes(value)?).ok()
}

/// A reply not shaped as the command's: named by the command, without the reply itself
/// (which may hold megabytes of payloads).
fn shape(what: &str) -> BridgeError {
    BridgeError::Broker(format!("an {what} reply of an unexpected shape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn entries_keep_fields_as_bytes_and_nil_fields_as_trimmed() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"\xff"), bulk(b"x")]),
                ]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = read_group(reply).unwrap();
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            Some(vec![(b"\xff".to_vec(), bulk(b"x"))])
        );
        assert_eq!(
            entries[1],
            Entry {
                id: "2-0".into(),
                fields: None
            }
        );
        assert_eq!(read_group(Value::Nil).unwrap(), []);
    }

    #[test]
    fn auto_claim_gives_the_cursor_and_deleted_ids_as_trimmed_entries() {
        let reply = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"3-0"),
                Value::Array(vec![bulk(b"id"), bulk(b"v")]),
            ])]),
            Value::Array(vec![bulk(b"4-0")]),
        ]);
        let (cursor, entries) = auto_claim(reply).unwrap();
        assert_eq!(cursor, "0-0");
        assert_eq!(entries[0].fields, Some(vec![(b"id".to_vec(), bulk(b"v"))]));
        assert_eq!(
            entries[1],
            Entry {
                id: "4-0".into(),
                fields: None
            }
        );
    }

    #[test]
    fn replies_of_another_shape_are_errors_that_do_not_echo_them() {
        let err = read_group(bulk(b"secret payload")).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(auto_claim(Value::Int(1)).is_err());
        assert!(read_group(Value::Array(vec![Value::Int(1)])).is_err());
    }
}
