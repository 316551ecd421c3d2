//! Calls made in phases that commit one by one, with recovery points.
