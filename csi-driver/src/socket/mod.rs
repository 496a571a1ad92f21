//! The plugin's Unix sockets (the CSI, registration and per-pod Workload API sockets): how they
//! are bound ([`bind`]) and the HTTP/2 front that lets clients which send the socket path as
//! `:authority` reach a tonic server ([`authority`]).

pub mod authority;
pub mod bind;

pub use bind::{DEFAULT_SOCKET_MODE, SocketError, bind_unix_socket, bind_unix_socket_in_new_dir};
