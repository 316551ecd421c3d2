//! The transactional outbox: effects outside the database, written in the
//! transaction of the call that caused them and delivered at least once
//! after it commits.
