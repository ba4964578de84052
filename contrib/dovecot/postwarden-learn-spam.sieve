# IMAPSieve: a message arrived in Junk by the user's move, copy or append.
# The user name comes from Dovecot's login (imap.user), never from the
# message or the client, so a user can only train their own statistics.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "postwarden-learn" [ "spam", "${username}" ];
