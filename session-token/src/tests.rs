use super::*;

fn claims(ttl: u64) -> Claims {
    Claims::new("test", "u1", "Ada", "doc-1", "pod-1", Role::Editor, ttl)
}

#[test]
fn round_trip_and_pem() {
    let key = SigningKey::generate();
    let key = SigningKey::from_pem(&key.to_pem().unwrap()).unwrap();
    let public = VerifyingKey::from_pem(&key.verifying_key().to_pem().unwrap()).unwrap();
    let c = claims(60);
    let token = key.mint(&c).unwrap();
    let got = public
        .verify(
            &token,
            &Expectations {
                document: Some("doc-1"),
                pod: Some("pod-1"),
                leeway_secs: 0,
                audience: None,
            },
        )
        .unwrap();
    assert_eq!(got, c);
}

#[test]
fn refuses_expired_wrong_doc_wrong_pod() {
    let key = SigningKey::generate();
    let public = key.verifying_key();
    let c = claims(60);
    let token = key.mint(&c).unwrap();
    let any = Expectations::default();
    assert!(matches!(
        public.verify_at(&token, &any, c.exp + 1),
        Err(TokenError::Expired { .. })
    ));
    assert_eq!(
        public.verify(
            &token,
            &Expectations {
                document: Some("doc-2"),
                ..Default::default()
            }
        ),
        Err(TokenError::WrongDocument)
    );
    assert_eq!(
        public.verify(
            &token,
            &Expectations {
                pod: Some("pod-2"),
                ..Default::default()
            }
        ),
        Err(TokenError::WrongPod)
    );
}

#[test]
fn refuses_forgeries() {
    let key = SigningKey::generate();
    let other = SigningKey::generate();
    let token = other.mint(&claims(60)).unwrap();
    let any = Expectations::default();
    assert_eq!(
        key.verifying_key().verify(&token, &any),
        Err(TokenError::BadSignature)
    );

    // Payload swapped under a valid signature.
    let good = key.mint(&claims(60)).unwrap();
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = key
        .mint(&Claims {
            role: Role::Editor,
            doc: "doc-9".into(),
            ..claims(60)
        })
        .unwrap();
    let evil_payload = evil.split('.').nth(1).unwrap().to_owned();
    parts[1] = &evil_payload;
    assert_eq!(
        key.verifying_key().verify(&parts.join("."), &any),
        Err(TokenError::BadSignature)
    );

    // alg=none and HS256 are refused before any signature check.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for alg in ["none", "HS256"] {
        let h = b64.encode(format!(r#"{{"alg":"{alg}"}}"#));
        let forged = format!("{h}.{}.", good.split('.').nth(1).unwrap());
        assert_eq!(
            key.verifying_key().verify(&forged, &any),
            Err(TokenError::Algorithm(alg.into()))
        );
    }
    assert!(matches!(
        key.verifying_key().verify("a.b", &any),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        key.verifying_key().verify("!!.??.**", &any),
        Err(TokenError::Malformed(_))
    ));
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        key.verifying_key().verify(&long, &any),
        Err(TokenError::TooLong { .. })
    ));
}

#[test]
fn detached_signatures_verify_only_the_signed_bytes_with_the_right_key() {
    let key = SigningKey::generate();
    let public = key.verifying_key();
    let sig = key.sign_detached(b"receipt");
    public.verify_detached(b"receipt", &sig).unwrap();
    assert_eq!(
        public.verify_detached(b"receipt!", &sig),
        Err(TokenError::BadSignature)
    );
    let other = SigningKey::generate().verifying_key();
    assert_eq!(
        other.verify_detached(b"receipt", &sig),
        Err(TokenError::BadSignature)
    );
    assert!(public.verify_detached(b"receipt", "not base64!").is_err());
    assert_eq!(public.key_id().len(), 16);
    assert_ne!(public.key_id(), other.key_id());
}

#[test]
fn session_and_jupyter_tokens_never_pass_as_each_other() {
    let key = SigningKey::generate();
    let public = key.verifying_key();
    let session = key.mint(&claims(60)).unwrap();
    let jupyter = key
        .mint(&Claims::jupyter("t", "ada", "Ada", "", Role::Editor, 60))
        .unwrap();
    let as_jupyter = Expectations {
        audience: Some(crate::JUPYTER_AUDIENCE),
        ..Default::default()
    };
    assert_eq!(
        public.verify(&session, &as_jupyter),
        Err(TokenError::WrongAudience)
    );
    assert_eq!(
        public.verify(&jupyter, &Expectations::default()),
        Err(TokenError::WrongAudience)
    );
    let got = public.verify(&jupyter, &as_jupyter).unwrap();
    assert_eq!(got.sub, "ada");
    assert_eq!(got.pod, "");
    // Nor does a Jupyter token bind a pod.
    assert!(public.verify_binding(&jupyter, "").is_err());
}

#[test]
fn authorization_values_give_their_token() {
    assert_eq!(crate::from_authorization("Bearer abc"), Some("abc"));
    assert_eq!(crate::from_authorization("bearer abc"), Some("abc"));
    assert_eq!(crate::from_authorization("token abc"), Some("abc"));
    assert_eq!(crate::from_authorization("Token  abc "), Some("abc"));
    assert_eq!(crate::from_authorization("Basic abc"), None);
    assert_eq!(crate::from_authorization("Bearer "), None);
    assert_eq!(crate::from_authorization("abc"), None);
}
