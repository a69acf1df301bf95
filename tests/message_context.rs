//! Messages whose entries carry contexts, randomly damaged, decode to an error or
//! re-encode to exactly their bytes (the fuzz target's property), and never panic.
use keel::raft::{Decoded, Message, MessageType};
use keel::storage::{Entry, EntryType};

#[test]
fn damaged_messages_with_contexts_decode_canonically() {
    let mut m = Message::new(MessageType::Append, 1, 2, 3);
    m.entries = vec![
        Entry { context: b"ctx".to_vec().into(), ..Entry::new(4, 3, b"data".to_vec()) },
        Entry::new(5, 3, Vec::new()),
        Entry { entry_type: EntryType::ConfChange, context: vec![9u8; 1].into(), ..Entry::new(6, 3, Vec::new()) },
    ];
    let base = m.encode();
    match Message::decode(&base).unwrap() {
        Decoded::Message(d) => assert_eq!(d.entries, m.entries),
        _ => panic!(),
    }
    let mut seed = 0xdead_beef_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut ok = 0;
    for _ in 0..200_000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 3 {
            if b.is_empty() {
                break;
            }
            let at = (next() % b.len() as u64) as usize;
            match next() % 4 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b[at] = next() as u8,
                2 => b.truncate(at),
                _ => b.insert(at, next() as u8),
            }
        }
        if let Ok(Decoded::Message(d)) = Message::decode(&b) {
            assert_eq!(d.encode(), b, "non-canonical decode of {b:?}");
            ok += 1;
        }
    }
    assert!(ok > 0);
}
