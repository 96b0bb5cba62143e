//! placeholder until the resolver lands
