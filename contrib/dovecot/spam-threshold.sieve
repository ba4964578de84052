# Per-user spam threshold at delivery (Onlime's setup): the spam milter puts
# X-Spam-Score on every scanned message, so each user can file mail into Junk
# at their own score, stricter or more lenient than the server's add_header
# threshold. Install as the user's (or a sieve_before) script; Dovecot's
# Pigeonhole needs the "relational" and "comparator-i;ascii-numeric"
# extensions (RFC 5231), on by default.
#
# Scores are compared as integers by i;ascii-numeric ("7.30" reads as 7), so
# a threshold of "5" catches 5.00 and up (not 4.50). Negative scores
# ("-1.20") do not start with a digit and compare as infinity under
# i;ascii-numeric (RFC 4790 section 9.1.1), so they are excluded first.
require ["fileinto", "relational", "comparator-i;ascii-numeric", "mailbox"];

# The server's own verdict first: tagged mail goes to Junk whatever the user set.
if header :is "X-Spam" "Yes" {
    fileinto :create "Junk";
    stop;
}

# This user's threshold: scores of 5.00 and up go to Junk.
if allof (not header :matches "X-Spam-Score" "-*",
          header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5") {
    fileinto :create "Junk";
    stop;
}
