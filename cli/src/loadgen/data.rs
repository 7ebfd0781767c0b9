//! The tables realistic leads are drawn from: names, email domains, states with their ZIP
//! prefixes and area codes, programs per education site. Weights are relative.

/// A state of `examples/rules.yaml`'s `state` enum, where its ZIP codes start and which area
/// codes its phones have.
#[derive(Debug)]
pub(crate) struct State {
    /// Two-letter code, as the `state` field takes it.
    pub(crate) code: &'static str,
    /// Relative share of the population (roughly).
    pub(crate) weight: u32,
    /// First three ZIP digits, inclusive range.
    pub(crate) zip3: (u32, u32),
    /// Area codes of the state.
    pub(crate) area_codes: &'static [u16],
}

/// The states the rules know.
pub(crate) const STATES: &[State] = &[
    State { code: "CA", weight: 12, zip3: (900, 961), area_codes: &[213, 310, 415, 408, 619, 916, 510, 714] },
    State { code: "TX", weight: 9, zip3: (750, 799), area_codes: &[214, 512, 713, 210, 817] },
    State { code: "FL", weight: 7, zip3: (320, 349), area_codes: &[305, 407, 813, 904, 786] },
    State { code: "NY", weight: 6, zip3: (100, 149), area_codes: &[212, 646, 718, 917, 516] },
    State { code: "PA", weight: 4, zip3: (150, 196), area_codes: &[215, 412, 610, 717] },
    State { code: "IL", weight: 4, zip3: (600, 629), area_codes: &[312, 773, 630, 847] },
    State { code: "OH", weight: 4, zip3: (430, 458), area_codes: &[216, 614, 513, 330] },
    State { code: "GA", weight: 3, zip3: (300, 319), area_codes: &[404, 678, 770, 912] },
    State { code: "NJ", weight: 3, zip3: (70, 89), area_codes: &[201, 973, 732, 908] },
    State { code: "WA", weight: 2, zip3: (980, 994), area_codes: &[206, 425, 253, 509] },
    State { code: "AZ", weight: 2, zip3: (850, 865), area_codes: &[602, 480, 520, 623] },
    State { code: "NV", weight: 1, zip3: (889, 898), area_codes: &[702, 775] },
    State { code: "VT", weight: 1, zip3: (50, 59), area_codes: &[802] },
];

/// Area codes of people who kept their phone number after moving (any state).
pub(crate) const MOVER_AREA_CODES: &[u16] = &[617, 303, 503, 312, 212, 415, 702, 602, 404, 215];

/// First names, with a few accented ones (the name key is Unicode-normalized).
pub(crate) const FIRST_NAMES: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Christopher",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Joshua",
    "Ashley",
    "Kevin",
    "Emily",
    "Brian",
    "Michelle",
    "Maria",
    "José",
    "Luis",
    "Sofía",
    "Carlos",
    "Ana",
    "Wei",
    "Mei",
    "Aisha",
    "Omar",
    "Priya",
    "Raj",
    "Tyrone",
    "Keisha",
    "DeShawn",
    "Chloé",
    "Zoë",
    "Noah",
    "Olivia",
    "Liam",
    "Emma",
    "Mateo",
    "Isabella",
    "Ethan",
    "Ava",
    "Jamal",
];

/// Last names, with a few accented, hyphenated or apostrophized ones.
pub(crate) const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernández",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Pérez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramírez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Kim",
    "Patel",
    "Chen",
    "O'Brien",
    "Smith-Jones",
    "Peña",
    "Washington",
    "Okafor",
    "Kowalski",
    "Murphy",
];

/// Webmail and ISP domains.
pub(crate) const EMAIL_DOMAINS: &[(&str, u32)] = &[
    ("gmail.com", 40),
    ("yahoo.com", 14),
    ("outlook.com", 8),
    ("hotmail.com", 8),
    ("icloud.com", 8),
    ("aol.com", 4),
    ("comcast.net", 3),
    ("msn.com", 2),
    ("live.com", 2),
    ("att.net", 2),
];

/// University domains (students, the `.edu` rules).
pub(crate) const EDU_DOMAINS: &[&str] = &[
    "ucla.edu",
    "nyu.edu",
    "asu.edu",
    "utexas.edu",
    "ufl.edu",
    "gatech.edu",
    "psu.edu",
    "osu.edu",
    "uw.edu",
    "umich.edu",
    "berkeley.edu",
    "unlv.edu",
];

/// Military domains (service members, the `.mil` lending rule).
pub(crate) const MIL_DOMAINS: &[&str] = &["army.mil", "navy.mil", "us.af.mil", "usmc.mil", "mail.mil"];

/// Throwaway and placeholder domains: QA staff testing the forms, people hiding their address
/// (the rules block them as test traffic).
pub(crate) const THROWAWAY_DOMAINS: &[&str] = &["mailinator.com", "example.com", "test.com"];

/// Programs asked for on `degreefinder`.
pub(crate) const DEGREEFINDER_PROGRAMS: &[(&str, u32)] = &[
    ("nursing", 16),
    ("medical_assisting", 8),
    ("healthcare_admin", 5),
    ("business", 12),
    ("accounting", 5),
    ("mba", 5),
    ("computer_science", 10),
    ("information_technology", 5),
    ("cybersecurity", 4),
    ("biology", 4),
    ("psychology", 8),
    ("criminal_justice", 8),
    ("education", 4),
    ("early_childhood_education", 3),
    ("graphic_design", 3),
];

/// Programs asked for on `nursingdegrees`.
pub(crate) const NURSING_PROGRAMS: &[(&str, u32)] = &[
    ("nursing", 25),
    ("rn_to_bsn", 15),
    ("lpn", 12),
    ("cna", 12),
    ("msn", 8),
    ("nurse_practitioner", 8),
    ("medical_assisting", 10),
];

/// Programs asked for on `onlinemba`.
pub(crate) const MBA_PROGRAMS: &[(&str, u32)] = &[
    ("mba", 50),
    ("executive_mba", 15),
    ("business", 10),
    ("accounting", 8),
    ("finance", 8),
    ("healthcare_admin", 5),
    ("information_technology", 4),
];

/// Highest education of someone with a diploma, and the youngest age it is plausible at.
pub(crate) const EDUCATION_LEVELS: &[(&str, u32, u8)] = &[
    ("high_school", 30, 17),
    ("ged", 8, 17),
    ("some_college", 22, 18),
    ("associate", 12, 19),
    ("bachelor", 20, 21),
    ("master", 6, 23),
    ("doctorate", 2, 27),
];
