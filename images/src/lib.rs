//! OCI images: references, registry client, content store, unpack, layer disks.
