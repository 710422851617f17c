enum Tier {
  Bronze = 1,
  Silver,
  Gold,
  Platinum = Gold * 2,
}

const tierOf = (spend: number): Tier =>
  spend > 10_000 ? Tier.Platinum : spend > 5_000 ? Tier.Gold : spend > 1_000 ? Tier.Silver : Tier.Bronze;
