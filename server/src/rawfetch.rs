//! Fetching raw log segments a snapshot install left out, from a peer.

use crate::error::Result;
use crate::group::Group;
use crate::node::Node;

/// Fills the raw-log gaps of `group` from a peer that holds them.
pub async fn fill_gaps(_node: &Node, _group: &Group) -> Result<()> {
    // Wired to the storage engine's raw import once it lands (see the issue note).
    Ok(())
}
