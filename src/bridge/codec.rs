//! How an event's payload becomes bytes on the stream, and back.

use super::BridgeError;

/// Encodes and decodes payloads of type `T`. A codec is chosen per bridge; both ends of a
/// stream must use the same one (a payload the receiver's codec cannot read is counted as a
/// decode error and moved aside, never a panic).
pub trait Codec<T>: Send + Sync {
    /// The bytes of `value`.
    ///
    /// # Errors
    /// [`BridgeError::Encode`] when `value` cannot be represented.
    fn encode(&self, value: &T) -> Result<Vec<u8>, BridgeError>;

    /// The value of `bytes`.
    ///
    /// # Errors
    /// [`BridgeError::Decode`] when `bytes` are not a `T` in this codec.
    fn decode(&self, bytes: &[u8]) -> Result<T, BridgeError>;
}

/// JSON through `serde_json`: the default, readable in `redis-cli`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec<T> for Json {
    fn encode(&self, value: &T) -> Result<Vec<u8>, BridgeError> {
        serde_json::to_vec(value).map_err(|e| BridgeError::Encode(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BridgeError> {
        serde_json::from_slice(bytes).map_err(|e| BridgeError::Decode(e.to_string()))
    }
}

/// A compact binary form through `postcard` (varints, no field names): about a third of
/// JSON's size for small structs, not readable in `redis-cli`, and both ends must share the
/// type's exact field order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec<T> for Postcard {
    fn encode(&self, value: &T) -> Result<Vec<u8>, BridgeError> {
        postcard::to_allocvec(value).map_err(|e| BridgeError::Encode(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BridgeError> {
        postcard::from_bytes(bytes).map_err(|e| BridgeError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_names_what_it_cannot_read() {
        let bytes = Codec::<(u32, String)>::encode(&Json, &(7, "seven".into())).unwrap();
        assert_eq!(bytes, br#"[7,"seven"]"#);
        let back: (u32, String) = Json.decode(&bytes).unwrap();
        assert_eq!(back, (7, "seven".into()));
        let err = Codec::<(u32, String)>::decode(&Json, b"{not json").unwrap_err();
        assert!(matches!(err, BridgeError::Decode(_)), "{err:?}");
    }

    #[test]
    fn postcard_round_trips_smaller_than_json_and_refuses_truncated_input() {
        let value: (u32, String) = (7, "seven".into());
        let bytes = Postcard.encode(&value).unwrap();
        assert_eq!(bytes, [7, 5, b's', b'e', b'v', b'e', b'n']);
        assert!(bytes.len() < Codec::<(u32, String)>::encode(&Json, &value).unwrap().len());
        assert_eq!(
            Codec::<(u32, String)>::decode(&Postcard, &bytes).unwrap(),
            value
        );
        let err = Codec::<(u32, String)>::decode(&Postcard, &bytes[..3]).unwrap_err();
        assert!(matches!(err, BridgeError::Decode(_)), "{err:?}");
    }
}
