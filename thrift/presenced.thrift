/*
 * presenced admin interface.
 *
 * JabberUser and Ejabthrift are wire-compatible with the original service: existing PHP
 * clients generated from them keep working unchanged. New methods live in PresencedAdmin,
 * which extends Ejabthrift, so one port serves old and new clients.
 *
 * Default transport: binary protocol over a buffered (unframed) socket on 127.0.0.1:9000;
 * framed transport and the compact protocol are a config choice ([thrift] in presenced.toml).
 * A JabberUser with an empty server means the first configured domain.
 */

namespace py presenced_admin

struct JabberUser {
  1: string name,
  2: string server
}

service Ejabthrift {
  void add_friend(1: JabberUser luser, 2: JabberUser ruser),
  void remove_friend(1: JabberUser luser, 2: JabberUser ruser),
  void spoof_message(1: JabberUser fromuser, 2: JabberUser touser, 3: string msg, 4: string subject),
  void spoof_chat(1: JabberUser fromuser, 2: JabberUser touser, 3: string msg, 4: string thread),
  void publish_np(1: JabberUser fromuser, 2: string artist, 3: string album, 4: string track, 5: i32 tracklength, 6: i32 tracknum)
}

/* A user name that is not a valid bare JID. */
exception BadJid {
  1: string jid,
  2: string reason
}

/* The method needs an existing account. */
exception UnknownUser {
  1: string jid
}

/* An argument other than a user is unusable (empty password, a user as their own friend). */
exception InvalidArgument {
  1: string message
}

/* The feature behind the method is switched off on this server (the IRC bot). */
exception NotEnabled {
  1: string feature,
  2: string message
}

/* One roster item of an account, as RFC 6121 describes it. */
struct RosterItem {
  1: string jid,
  2: string subscription,      // none, to, from, both
  3: string name,              // empty when the item has no name
  4: list<string> groups,
  5: bool ask                  // our subscription request is pending
}

/* subscriber receives subject's events (tunes, presence, site events); subject may be a
   topic: name "artist/radiohead", server empty (docs/topics.md). */
struct Subscription {
  1: JabberUser subscriber,
  2: JabberUser subject
}

/* What a user is playing; every field empty or 0 when nothing is. */
struct NowPlaying {
  1: string artist,
  2: string album,
  3: string track,
  4: i32 tracklength,
  5: i32 tracknum,
  6: bool playing
}

/* One online session: protocol "xmpp", "comet", "irc"...; label: XMPP resource, peer. */
struct UserSession {
  1: string protocol,
  2: string label
}

/* A group chat room (docs/muc.md): name@conference.<domain>. */
struct Room {
  1: string jid,
  2: string name,
  3: bool persistent,
  4: bool listed,             // in the disco#items of the conference service
  5: i32 occupants
}

/* Someone in a room; jid is their real JID (an XMPP resource, irc:<channel>/<nick>...). */
struct Occupant {
  1: string nick,
  2: string jid,
  3: string role,
  4: string affiliation
}

service PresencedAdmin extends Ejabthrift {
  /* Create an account; false when it exists already. */
  bool register_user(1: JabberUser user, 2: string password)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  void set_password(1: JabberUser user, 2: string password)
    throws (1: BadJid bad_jid, 2: UnknownUser unknown, 3: InvalidArgument invalid),
  /* Delete an account and everything it owns; its online sessions are closed. */
  void remove_user(1: JabberUser user)
    throws (1: BadJid bad_jid, 2: UnknownUser unknown),
  bool user_exists(1: JabberUser user)
    throws (1: BadJid bad_jid),
  list<RosterItem> get_roster(1: JabberUser user)
    throws (1: BadJid bad_jid, 2: UnknownUser unknown),
  /* Who receives the user's events. */
  list<string> get_subscribers(1: JabberUser user)
    throws (1: BadJid bad_jid),
  /* Add or remove subscription graph edges in bulk; returns how many pairs. */
  i32 add_subscriptions(1: list<Subscription> pairs)
    throws (1: BadJid bad_jid),
  i32 remove_subscriptions(1: list<Subscription> pairs)
    throws (1: BadJid bad_jid),
  NowPlaying get_now_playing(1: JabberUser user)
    throws (1: BadJid bad_jid),
  list<UserSession> user_sessions(1: JabberUser user)
    throws (1: BadJid bad_jid),
  /* Users with at least one online session, on every protocol. */
  i32 online_count(),
  /* A comet stream token; ttl in seconds, 0 = one day. */
  string stream_token(1: JabberUser user, 2: i32 ttl)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  /* Say text through the IRC bot; an empty target means its default channel. */
  void irc_say(1: string target, 2: string text)
    throws (1: NotEnabled not_enabled, 2: InvalidArgument invalid),
  /* Server counters: users, online_users, sessions, sessions_<protocol>, uptime_seconds... */
  map<string, i64> stats(),
  /* A site event (docs/topics.md) from a user or a topic ("artist/radiohead") to its
     followers; json_data is a JSON object; returns the sessions reached. */
  i32 publish_event(1: string subject, 2: string type, 3: string json_data)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  /* Group chat (docs/muc.md). A room is name@conference.<domain>; an empty owner
     makes a room without one (the admin manages it). */
  void create_room(1: string room, 2: JabberUser owner, 3: bool persistent)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid, 3: NotEnabled not_enabled),
  void destroy_room(1: string room, 2: string reason)
    throws (2: InvalidArgument invalid, 3: NotEnabled not_enabled),
  list<Room> list_rooms() throws (3: NotEnabled not_enabled),
  list<Occupant> room_occupants(1: string room)
    throws (2: InvalidArgument invalid, 3: NotEnabled not_enabled),
  /* owner, admin, member, none or outcast (a ban: occupants of that JID leave). */
  void set_room_affiliation(1: string room, 2: JabberUser user, 3: string affiliation)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid, 3: NotEnabled not_enabled),
  /* A message from the room itself to every occupant, kept in its history. */
  void send_room_message(1: string room, 2: string body)
    throws (2: InvalidArgument invalid, 3: NotEnabled not_enabled),
  /* Nodes of the pubsub service pubsub.<domain> (docs/topics.md): a topic with an owner,
     rules and items. config holds XEP-0060 fields ("pubsub#access_model": "whitelist",
     "pubsub#max_items": "20", "pubsub#persist_items", "pubsub#title"). The site manages
     every node. */
  void create_node(1: string topic, 2: JabberUser owner, 3: map<string, string> config)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  void configure_node(1: string topic, 2: map<string, string> config)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  /* Every node and its owner. */
  map<string, string> list_nodes(),
  /* Followers hear <delete/> and stop following the topic. */
  void delete_node(1: string topic)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  void purge_node(1: string topic)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid),
  /* publisher, member, none or outcast (an outcast stops following). */
  void set_node_affiliation(1: string topic, 2: JabberUser user, 3: string affiliation)
    throws (1: BadJid bad_jid, 2: InvalidArgument invalid)
}
