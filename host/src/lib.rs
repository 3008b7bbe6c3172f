//! malt: the library behind the `malt` command. See the workspace crates for the parts.
