"""The named tags are the table's own tags (one home for tag numbers, issue #12)."""

from m2mgw.protocol import tags


def test_every_named_tag_is_in_the_table() -> None:
    named = {
        name: value
        for name, value in vars(tags).items()
        if name.isupper() and isinstance(value, int) and not name.startswith("_")
    }
    assert len(named) > 30
    missing = {name: hex(value) for name, value in named.items() if value not in tags.TAGS}
    assert missing == {}


def test_tag_groups_hold_named_tags() -> None:
    assert tags.TAGS[tags.SYNC_LIST].name == "TLVSYNCTAGVALUE"
    assert [tags.TAGS[t].name for t in tags.ALARM_TAGS] == [
        "ALARMSTATUS", "ALARMTYPE", "ALARMCODE", "RESTOREALARM",
    ]
    assert all(tags.TAGS[t].name.startswith(("UPLINK", "DOWNLINK", "PUBLICKEY"))
               for t in tags.CREDENTIAL_TAGS)
