//! The agent daemon's protocol: JSON lines over a Unix stream socket.
//!
//! The socket is world-connectable (0666) on purpose: any workspace user may ask for a
//! session. Authority never comes from what a message says but from the kernel: the daemon
//! reads the caller's uid and pid from SO_PEERCRED (and a pidfd from SO_PEERPIDFD, so a
//! recycled pid cannot be confused with the caller) and chooses the policy itself.
//!
//! A `boundary run` client sends [`Request::Start`], gets the session id and a one-time join
//! token, and forks the command; the forked child (already under no_new_privs and Landlock)
//! opens its own connection and sends [`Request::Join`], and the daemon moves exactly that
//! peer into the session cgroup before answering. The client waits for the command, then sends
//! [`Request::Exited`]; the daemon ends the session and answers once every event is written.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Where the agent listens unless `--socket` or `BOUNDARY_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/boundary/agent.sock";

/// A request line is small; anything longer is refused rather than buffered.
pub const MAX_LINE: usize = 256 * 1024;

/// The socket path the client and the daemon use.
pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("BOUNDARY_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start a session for the caller. The daemon picks the policy: its default, or `policy`
    /// when the admin named it as one users may choose.
    Start {
        #[serde(default)]
        policy: Option<String>,
        command: Vec<String>,
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        deny_events_only: bool,
        /// Stream the session's events back on this connection.
        #[serde(default)]
        events: bool,
    },
    /// Sent by the forked command itself: move me into the session.
    Join {
        session: String,
        token: String,
    },
    /// The command ended (sent on the Start connection).
    Exited {
        code: i32,
        #[serde(default)]
        signal: Option<i32>,
    },
    Status,
    Sessions,
    Events {
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        session: Option<String>,
    },
}

/// Reads one line (without the newline); `None` at end of stream. Lines over [`MAX_LINE`]
/// are an error, so a hostile peer cannot make either side buffer without limit.
pub async fn read_line<R>(reader: &mut R) -> Result<Option<String>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut buf = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(Error::Agent("connection closed mid-line".into()))
            };
        }
        if let Some(i) = available.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&available[..i]);
            reader.consume(i + 1);
            break;
        }
        let n = available.len();
        buf.extend_from_slice(available);
        reader.consume(n);
        if buf.len() > MAX_LINE {
            return Err(Error::Agent(format!("a line longer than {MAX_LINE} bytes")));
        }
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| Error::Agent("a line that is not UTF-8".into()))
}

/// Writes one JSON value as a line.
pub async fn write_json<W>(writer: &mut W, value: &impl Serialize) -> Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut line = serde_json::to_vec(value).map_err(|e| Error::Agent(e.to_string()))?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one line and parses it as JSON.
pub async fn read_json<R, T>(reader: &mut R) -> Result<Option<T>>
where
    R: tokio::io::AsyncBufRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    match read_line(reader).await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| Error::Agent(format!("malformed message: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Start {
            policy: None,
            command: vec!["curl".into()],
            session_id: None,
            deny_events_only: false,
            events: true,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"op":"start""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let join: Request =
            serde_json::from_str(r#"{"op":"join","session":"s","token":"t"}"#).unwrap();
        assert_eq!(
            join,
            Request::Join {
                session: "s".into(),
                token: "t".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"detach"}"#).is_err());
    }

    #[tokio::test]
    async fn overlong_lines_are_refused_not_buffered() {
        let data = vec![b'x'; MAX_LINE + 10];
        let mut reader = tokio::io::BufReader::new(&data[..]);
        assert!(read_line(&mut reader).await.is_err());
        let mut ok = tokio::io::BufReader::new(&b"{\"op\":\"status\"}\nrest"[..]);
        let r: Option<Request> = read_json(&mut ok).await.unwrap();
        assert_eq!(r, Some(Request::Status));
    }
}
