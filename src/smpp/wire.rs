//! Reading PDUs off a stream: the one IO helper the front's sessions and the upstream's
//! connection share.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::pdu::MAX_PDU;

/// Reads one PDU: its length, then the rest (the frame `pdu::decode` takes). `None` when the
/// peer closed between PDUs; an error for a length out of bounds or a read that failed.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<BytesMut>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_be_bytes(length) as usize;
    if !(16..=MAX_PDU).contains(&length) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a PDU of {length} bytes (16 to {MAX_PDU} are read)"),
        ));
    }
    let mut frame = BytesMut::zeroed(length - 4);
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}
